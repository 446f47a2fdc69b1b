"""Dense descriptors: network, loss, augmentation, training, export and loading."""
