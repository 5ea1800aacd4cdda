"""Method 2: retrain the top blocks of the network together with the head (``batchclf train --fine-tune``).

The head starts from the method-1 logistic regression, so the first epochs refine a good classifier
instead of tearing the network apart with the gradients of a random head. Batch normalisation stays
frozen (its statistics are estimated from a handful of images otherwise). Augmentation is light: a
random 87.5 % crop (the same scale as the evaluation centre crop) and a horizontal flip. Training
stops early when the validation loss has not improved for ``patience`` epochs, keeping the best
weights. The head is then refit (logistic regression again) on the fine-tuned features of all the
training images, the validation ones included. Everything is seeded, and TensorFlow's deterministic
ops are enabled, so a seed gives the same model on a CPU.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backends import quiet_native_stderr
from ..decode import ImageDecodeError, Preprocessing, decode_image
from ..errors import UsageError
from ..models.efficientnet_lite import FEATURE_LAYER
from .dataset import LabelledImages, stratified_split

CROP_FRACTION = 0.875


def decode_all(paths: list[str], size: int, crop_fraction: float = CROP_FRACTION) -> tuple[np.ndarray, dict]:
    """Decode ``paths`` to an (n, size, size, 3) uint8 array; unreadable ones are left out and returned."""
    preprocessing = Preprocessing(size, crop_fraction)

    def one(path):
        try:
            return decode_image(path, preprocessing).pixels
        except ImageDecodeError as error:
            return str(error)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, paths))
    errors = {p: r for p, r in zip(paths, results) if isinstance(r, str)}
    pixels = [r for r in results if not isinstance(r, str)]
    return (np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)), errors


def _set_trainable(model, unfreeze: int) -> list[str]:
    """Train the top ``unfreeze`` blocks, the head convolution and the classifier; freeze the rest and all BN."""
    import keras

    blocks = sorted(
        {
            int(layer.name[5:].split("_")[0])
            for layer in model.layers
            if layer.name.startswith("block") and layer.name[5:].split("_")[0].isdigit()
        }
    )
    retrained = {f"block{i}_" for i in blocks[len(blocks) - unfreeze :]} if unfreeze else set()
    names = []
    for layer in model.layers:
        trainable = (
            layer.name == "predictions"
            or layer.name.startswith("head_")
            or any(layer.name.startswith(prefix) for prefix in retrained)
        )
        layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            names.append(layer.name)
    return names


def _batches(pixels: np.ndarray, targets: np.ndarray, batch_size: int, size: int, seed: int):
    """A Keras dataset of randomly cropped and flipped batches, reshuffled (reproducibly) each epoch."""
    import keras

    class AugmentedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(pixels))

        def __len__(self):
            return int(np.ceil(len(pixels) / batch_size))

        def __getitem__(self, index):
            rng = np.random.default_rng([seed, self.epoch, index, 1])
            chosen = self.order[index * batch_size : (index + 1) * batch_size]
            margin = pixels.shape[1] - size
            batch = np.empty((len(chosen), size, size, 3), np.float32)
            for row, i in enumerate(chosen):
                top, left = rng.integers(0, margin + 1, size=2)
                image = pixels[i, top : top + size, left : left + size]
                batch[row] = image[:, ::-1] if rng.random() < 0.5 else image
            return batch, targets[chosen]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(pixels))

    return AugmentedBatches()


def fine_tune(
    model, data: LabelledImages, classes: tuple[str, ...], settings, seed: int, base_model_name: str = "", log=print
) -> list[dict]:
    """Fine-tune ``model`` in place on ``data``; return the per-epoch history."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    train, validation = stratified_split(data, settings.validation_fraction, seed)
    if not len(validation):
        raise UsageError("the validation set is empty; raise --validation-fraction or add images")
    size = int(model.inputs[0].shape[1])
    larger = int(round(size / CROP_FRACTION))
    train_pixels, _ = decode_all(list(train.paths), larger, 1.0)
    validation_pixels, _ = decode_all(list(validation.paths), size)
    train_targets = np.array([classes.index(label) for label in train.labels])
    validation_targets = np.array([classes.index(label) for label in validation.labels])
    retrained = _set_trainable(model, settings.unfreeze)
    log(
        f"fine-tuning {len(retrained)} layers of {base_model_name or model.name} on {len(train)} images "
        f"(validation: {len(validation)}), up to {settings.epochs} epochs"
    )
    model.get_layer(FEATURE_LAYER)  # the saved model must keep its feature layer
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    history: list[dict] = []

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            entry = {k: round(float(logs[k]), 6) for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
            entry["seconds"] = round(time.perf_counter() - self.started, 1)
            history.append(entry)
            log(
                f"epoch {epoch + 1}/{settings.epochs}: train loss {entry['loss']:.4f} accuracy {entry['accuracy']:.3f}"
                f", validation loss {entry['val_loss']:.4f} accuracy {entry['val_accuracy']:.3f} "
                f"({entry['seconds']:.0f} s)"
            )

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience, restore_best_weights=True)
    with quiet_native_stderr():  # tf.data's C++ runtime complains about graph attributes on every fit
        model.fit(
            _batches(train_pixels, train_targets, settings.batch_size, size, seed),
            validation_data=(validation_pixels.astype(np.float32), validation_targets),
            epochs=settings.epochs,
            callbacks=[EpochLog(), stop],
            verbose=0,
        )
    for layer in model.layers:
        layer.trainable = True
    return history


def refit_head(model, data: LabelledImages, classes: tuple[str, ...], seed: int) -> dict:
    """Refit the head on the fine-tuned features of every training image, validation images included.

    Early stopping needed held-out images; once the network is fixed, the linear head can use them all.
    """
    import keras

    from .logistic import choose_l2, fit_logistic

    pixels, _ = decode_all(list(data.paths), int(model.inputs[0].shape[1]))
    featurizer = keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output)
    with quiet_native_stderr():
        features = np.asarray(featurizer.predict(pixels.astype(np.float32), batch_size=32, verbose=0))
    targets = np.array([classes.index(label) for label in data.labels])
    cross_validation = choose_l2(features, targets, len(classes), seed)
    head, _ = fit_logistic(features, targets, len(classes), cross_validation.l2)
    model.get_layer("predictions").set_weights([head.weights.astype(np.float32), head.bias.astype(np.float32)])
    return {"l2": cross_validation.l2, "folds": cross_validation.folds, "images": len(data)}
