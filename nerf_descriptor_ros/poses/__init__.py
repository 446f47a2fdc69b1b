"""Camera poses without an arm: structure-from-motion and alignment to arm poses."""
