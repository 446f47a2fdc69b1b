"""Camera poses without an arm: structure-from-motion, alignment to arm poses, foreign pose formats."""
