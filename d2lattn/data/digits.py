"""Handwritten digits for the Vision Transformer: scikit-learn's `load_digits`, 1,797 8x8 grey
images of the digits 0-9 (UCI's optical recognition set), which ship inside the scikit-learn
wheel: nothing is downloaded. Needs scikit-learn (`pip install 'd2lattn[data]'`)."""

import numpy as np

from d2lattn.data.translation import Batches

NUM_IMAGES, IMAGE_SIZE, NUM_CLASSES = 1797, 8, 10
SPLIT_SEED = 0                      # the held-out images are the same whatever `seed` shuffles


class DigitsData:
    """Channels-last float32 images (n, 8, 8, 1) with pixels scaled from 0..16 to [0, 1], int32 labels.

    One fixed permutation (SPLIT_SEED) splits the images: the last `num_val` of it (default 297)
    are held out, the other 1,500 train. `.train` is a re-iterable of NumPy batches (images
    (b, 8, 8, 1), labels (b,)), shuffled anew each pass from `seed`; `.val_images`, `.val_labels`
    (and `.train_images`, `.train_labels`) are the whole sets.
    """

    IMAGE_SIZE, NUM_CLASSES = IMAGE_SIZE, NUM_CLASSES

    def __init__(self, *, batch_size, num_val=297, seed=0):
        from sklearn.datasets import load_digits  # the data set's only dependency, imported where it is used

        if not 0 < num_val < NUM_IMAGES:
            raise ValueError(f"num_val must be between 1 and {NUM_IMAGES - 1}, got {num_val!r}")
        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[..., None]    # (1797, 8, 8, 1), in [0, 1]
        labels = digits.target.astype(np.int32)                          # (1797,)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
        train, val = order[:-num_val], order[-num_val:]
        self.train_images, self.train_labels = images[train], labels[train]
        self.val_images, self.val_labels = images[val], labels[val]
        self.train = Batches((self.train_images, self.train_labels), batch_size, shuffle=True, seed=seed)

    @staticmethod
    def accuracy(logits, labels):
        """The fraction of rows whose largest logit is at the label."""
        return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels)))
