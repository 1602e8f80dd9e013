"""Training recipes: optimizers as configured, label smoothing, MixUp/CutMix, RandAugment
and random erasing, class weights, balanced sampling; one end-to-end epoch.

Learning-rate schedules, as configured too, are tested in test_schedules.py. Data ops are
checked eagerly and inside tf.data. Run: python -m pytest tests/test_recipes.py
"""

import csv
import math
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import train
from keras_caltech.config import load_config
from keras_caltech.data.augment import build_augmenter
from keras_caltech.data.pipeline import EpochBatches, load_image, split_files
from keras_caltech.errors import UserError
from keras_caltech.training.optim import AdamWithL2, SGDWithL2, make_optimizer
from keras_caltech.training.recipes import batch_transform, build_batch_mixer, class_weights, loss_and_metrics

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "train.epochs=1",
        "--set", "data.cache_dir=", "--set", "train.tensorboard=false", "--set", "export.enabled=false"]
STEPS_PER_EPOCH = 10


def train_config(*overrides):
    return load_config(None, list(overrides)).train


# --- Optimizers, as make_optimizer builds them ---------------------------------------------


def test_optimizers_carry_momentum_nesterov_and_weight_decay():
    sgd = make_optimizer(train_config("train.optimizer=sgd", "train.momentum=0.8", "train.nesterov=true",
                                      "train.weight_decay=1e-4"), STEPS_PER_EPOCH)
    assert isinstance(sgd, SGDWithL2) and (sgd.momentum, sgd.nesterov, sgd.l2) == (0.8, True, 1e-4)
    assert sgd.weight_decay is None  # the decay is the L2 term, not Keras's decoupled one
    adam = make_optimizer(train_config("train.optimizer=adam", "train.weight_decay=1e-4"), STEPS_PER_EPOCH)
    assert isinstance(adam, AdamWithL2) and adam.l2 == 1e-4
    adamw = make_optimizer(train_config("train.optimizer=adamw", "train.weight_decay=0.05"), STEPS_PER_EPOCH)
    assert type(adamw) is keras.optimizers.AdamW and adamw.weight_decay == pytest.approx(0.05)


def test_sgd_weight_decay_is_pytorchs_l2_term_through_momentum():
    weight = keras.Variable(np.array([1.0], "float32"))
    optimizer = SGDWithL2(0.1, momentum=0.9, l2=0.5)
    expected, buffer = 1.0, 0.0
    for _ in range(3):  # a zero loss gradient: only the decay moves the weight
        optimizer.apply([keras.ops.zeros((1,))], [weight])
        buffer = 0.9 * buffer + 0.5 * expected  # torch.optim.SGD: b = m b + (g + wd w)
        expected -= 0.1 * buffer
        assert float(weight.numpy()[0]) == pytest.approx(expected, rel=1e-6)


def test_adam_decays_through_its_gradient_and_adamw_decays_the_weight_directly():
    # One step from w = 4 with a zero loss gradient and decay 0.5, rate 0.01:
    # Adam + L2 sees the gradient 2 and steps by about the rate; AdamW shrinks w by rate * 0.5 * w.
    coupled, decoupled = (keras.Variable(np.array([4.0], "float32")) for _ in range(2))
    AdamWithL2(0.01, l2=0.5).apply([keras.ops.zeros((1,))], [coupled])
    keras.optimizers.AdamW(0.01, weight_decay=0.5).apply([keras.ops.zeros((1,))], [decoupled])
    assert float(coupled.numpy()[0]) == pytest.approx(4.0 - 0.01, rel=1e-5)
    assert float(decoupled.numpy()[0]) == pytest.approx(4.0 - 0.01 * 0.5 * 4.0, rel=1e-6)


@pytest.mark.parametrize("override, message", [
    ("train.optimizer=rmsprop", "Valid optimizers: adam, adamw, sgd"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0"),
])
def test_unknown_optimizers_and_negative_decay_are_refused_as_the_config_loads(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


# --- Loss, labels and batch mixing ----------------------------------------------------


def test_label_smoothing_trains_on_one_hot_labels_with_the_usual_metric_names():
    plain_loss, plain_metrics = loss_and_metrics(load_config(None), 10)
    assert isinstance(plain_loss, keras.losses.SparseCategoricalCrossentropy)
    config = load_config(None, ["train.label_smoothing=0.1"])
    loss, metrics = loss_and_metrics(config, 3)
    assert [metric.name for metric in metrics] == [metric.name for metric in plain_metrics] == ["accuracy", "top5"]
    logits = np.array([[2.0, 0.0, -1.0]], "float32")
    smoothed = np.array([[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]])
    log_softmax = logits - np.log(np.exp(logits).sum())
    expected = -(smoothed * log_softmax).sum()
    assert float(loss(np.array([[1.0, 0.0, 0.0]], "float32"), logits)) == pytest.approx(expected, rel=1e-5)


def constant_images(values, size=16):
    """A batch of images, image i filled with values[i]: (len, size, size, 3) float32."""
    return np.stack([np.full((size, size, 3), value, "float32") for value in values])


VALUES = np.array([0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0, 210.0], "float32")


def mixed_in_tf_data(mixer, dataset, num_classes):
    """Mixes a batched (images, int labels) dataset inside tf.data, batch i keyed by (0, i)."""
    def mix(index, batch):
        images, labels = batch
        return mixer(images, tf.one_hot(labels, num_classes), tf.stack([tf.constant(0, tf.int64), index]))

    return list(dataset.enumerate().map(mix).as_numpy_iterator())


@pytest.mark.parametrize("kind, tolerance", [("mixup", 1e-3), ("cutmix", 0.08 * 210)])
@pytest.mark.parametrize("inside_tf_data", [False, True], ids=["eager", "tf.data"])
def test_mixed_labels_give_each_source_image_its_share_of_the_mixed_pixels(kind, tolerance, inside_tf_data):
    # Image i is the constant VALUES[i], so a mixed image's mean is sum_k label_k * VALUES[k]
    # exactly for MixUp, and up to CutMix's pixel rounding of the patch area.
    augment = load_config(None, [f"augment.{kind}_alpha={1.0 if kind == 'cutmix' else 0.4}"]).augment
    mixer = build_batch_mixer(augment, num_classes=8, seed=3)
    images, labels = constant_images(VALUES, size=32), np.arange(8)
    if inside_tf_data:
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).repeat(4)
        batches = mixed_in_tf_data(mixer, dataset, 8)
    else:
        batches = [tuple(np.asarray(part) for part in mixer(tf.constant(images), tf.one_hot(labels, 8),
                                                            tf.constant([0, index], tf.int64)))
                   for index in range(4)]
    mixed_rows = 0
    for mixed_images, mixed_labels in batches:
        assert mixed_images.shape == images.shape and mixed_labels.shape == (8, 8)
        np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(mixed_images.mean(axis=(1, 2, 3)), mixed_labels @ VALUES, atol=tolerance)
        mixed_rows += int(np.sum(mixed_labels.max(axis=1) < 0.999))
    assert mixed_rows > 0  # the batches were actually mixed


def test_with_both_mixers_each_batch_gets_one_of_them_as_its_key_decides():
    augment = load_config(None, ["augment.mixup_alpha=0.4", "augment.cutmix_alpha=1.0"]).augment
    mixer = build_batch_mixer(augment, num_classes=8, seed=0)
    dataset = tf.data.Dataset.from_tensor_slices((constant_images(VALUES), np.arange(8))).batch(8).repeat(12)
    batches = mixed_in_tf_data(mixer, dataset, 8)
    kinds = set()
    for images, _ in batches:
        # CutMix pastes pixels (each pixel is one of VALUES); MixUp blends them.
        pasted = np.isin(images, VALUES).all()
        kinds.add("cutmix" if pasted else "mixup")
    assert kinds == {"mixup", "cutmix"}
    # Keyed, not stateful: the same keys mix the same way again (a resumed run replays its batches).
    for (images, labels), (again_images, again_labels) in zip(batches, mixed_in_tf_data(mixer, dataset, 8)):
        np.testing.assert_array_equal(again_images, images)
        np.testing.assert_array_equal(again_labels, labels)


def test_no_mixing_is_configured_by_default():
    assert build_batch_mixer(load_config(None).augment, 8) is None


@pytest.mark.parametrize("overrides, message", [
    (["train.label_smoothing=1.0"], "train.label_smoothing must be in [0, 1)"),
    (["augment.cutmix_alpha=2"], "augment.cutmix_alpha must be between 0"),
    (["augment.mixup_alpha=-0.2"], "augment.mixup_alpha must be >= 0"),
    (["train.class_weight=inverse"], "Valid modes: none, balanced"),
    (["train.class_weight=balanced", "data.balanced_sampling=true"], "use one of them"),
])
def test_recipe_settings_out_of_range_are_refused_as_the_config_loads(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, overrides)


# --- Augmentation ---------------------------------------------------------------------


@pytest.mark.parametrize("inside_tf_data", [False, True], ids=["eager", "tf.data"])
def test_rand_augment_and_random_erasing_keep_shapes_and_the_0_255_range(inside_tf_data):
    augment = load_config(None, ["augment.horizontal_flip=false", "augment.rand_augment_ops=2",
                                 "augment.random_erasing=1.0"]).augment
    augmenter = build_augmenter(augment, 32, seed=1)
    assert [layer.name for layer in augmenter.layers] == ["rand_augment", "random_erasing"]
    images = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    if inside_tf_data:
        dataset = tf.data.Dataset.from_tensor_slices(images).batch(6).map(
            lambda batch: augmenter(batch, training=True))
        output = next(iter(dataset)).numpy()
    else:
        output = np.asarray(augmenter(images, training=True))
    assert output.shape == images.shape
    assert output.min() >= 0.0 and output.max() <= 255.0
    assert all(not np.array_equal(out, original) for out, original in zip(output, images))


def test_erasing_probability_out_of_range_is_refused_as_the_config_loads():
    with pytest.raises(UserError, match="augment.random_erasing must be between 0 and 1"):
        load_config(None, ["augment.random_erasing=1.5"])


# --- Class imbalance --------------------------------------------------------------------


def test_balanced_class_weights_are_n_over_classes_times_count():
    labels = [0] * 8 + [1] * 2 + [2] * 2  # 12 images, 3 classes
    weights = class_weights(labels, 3, "balanced")
    assert weights == pytest.approx({0: 12 / (3 * 8), 1: 12 / (3 * 2), 2: 12 / (3 * 2)})
    # Every class now carries the same total weight, and the average weight is 1.
    assert 8 * weights[0] == pytest.approx(2 * weights[1]) == pytest.approx(2 * weights[2])
    assert np.mean([weights[label] for label in labels]) == pytest.approx(1.0)
    assert class_weights(labels, 3, "none") is None


@pytest.mark.parametrize("overrides", [[], ["augment.mixup_alpha=0.4"]], ids=["int labels", "mixed labels"])
def test_class_weights_reach_the_loss_as_each_examples_sample_weight(overrides):
    # fit(class_weight=...) weights each example by its label's largest entry; so does the pipeline.
    config = load_config(None, ["train.class_weight=balanced", *overrides])
    transform = batch_transform(config, 3, {0: 0.5, 1: 2.0, 2: 1.0})
    images, labels = constant_images([0.0, 60.0, 120.0, 180.0]), tf.constant([0, 1, 2, 1], tf.int32)
    _, batch_labels, weights = (np.asarray(part) for part in transform(images, labels, tf.constant([0, 1], tf.int64)))
    classes = batch_labels.argmax(axis=1) if batch_labels.ndim == 2 else batch_labels
    np.testing.assert_allclose(weights, np.array([0.5, 2.0, 1.0])[classes])
    if not overrides:
        np.testing.assert_allclose(weights, [0.5, 2.0, 1.0, 2.0])
    assert batch_transform(load_config(None), 3, None) is None  # plain batches stay (images, labels)


def test_class_weights_need_every_class_in_the_training_split():
    with pytest.raises(UserError, match="class\\(es\\) 1 have none"):
        class_weights([0, 0, 2], 3)


@pytest.fixture()
def imbalanced_files(tmp_path):
    """(paths, labels) of 18 red images of class 'common' and 2 blue ones of class 'rare', and the class names."""
    root = tmp_path / "data"
    pairs = []
    for label, (name, count, colour) in enumerate([("001.common", 18, (255, 0, 0)), ("002.rare", 2, (0, 0, 255))]):
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (12, 10), colour).save(root / name / f"{index}.png")
            pairs.append((f"{name}/{index}.png", label))
    return split_files(root, pairs), ["001.common", "002.rare"]


def test_balanced_sampling_draws_both_classes_equally_with_the_right_images(imbalanced_files):
    files, class_names = imbalanced_files
    batches = EpochBatches(*files, class_names, 8, 5, seed=0, balanced=True)
    labels = []
    for index in range(10):  # 10 epochs of 20 images (the split's size) each
        epoch = [(images.numpy(), batch_labels.numpy()) for images, batch_labels in batches(index)]
        assert sum(len(batch_labels) for _, batch_labels in epoch) == 20
        for images, batch_labels in epoch:
            assert images.shape[1:] == (8, 8, 3) and batch_labels.dtype == np.int32
            # Red images carry label 0, blue ones label 1: paths and labels stayed paired.
            np.testing.assert_array_equal(images[..., 2].mean(axis=(1, 2)) > 127, batch_labels == 1)
            labels.extend(batch_labels)
    assert 0.35 < np.mean(labels) < 0.65  # unbalanced, the rare class would be 10%
    # Each epoch's draws are a function of (seed, epoch): a resumed run draws them again.
    again = np.concatenate([batch_labels for _, batch_labels in batches(9).as_numpy_iterator()])
    np.testing.assert_array_equal(again, labels[-20:])
    # Decoded and resized exactly as the rest of the pipeline does.
    expected = load_image(files[0][-1], 8)  # a rare (blue) image
    blue = next(images[labels_ == 1][0] for images, labels_ in batches(0).as_numpy_iterator() if (labels_ == 1).any())
    np.testing.assert_array_equal(blue, expected)


def test_validation_of_a_run_trained_on_crops_sees_the_central_crop(tiny_dataset, tmp_path):
    """Training crops 32 px from a 40 px resize; validation must see the same scale."""
    from keras_caltech.data import scan
    from keras_caltech.data.splits import stratified_split
    from keras_caltech.training.recipes import make_fit_data

    result = scan.scan_dataset(tiny_dataset)
    splits = stratified_split(result.files, result.class_names, seed=0)
    files = {name: split_files(result.root, splits[name]) for name in ("train", "val")}
    config = load_config(None, ["data.image_size=32", "augment.resize_crop=40", "augment.horizontal_flip=false"])
    train_batches, val_data = make_fit_data(config, files, result.class_names, tmp_path / "cache", 32)
    images, _ = next(iter(val_data))
    np.testing.assert_array_equal(images[0].numpy(), load_image(files["val"][0][0], 32, resize_crop=40))
    assert next(iter(train_batches(0)))[0].shape[1:] == (32, 32, 3)


# --- End to end -------------------------------------------------------------------------


def test_one_epoch_with_label_smoothing_mixup_cutmix_and_class_weights_runs_end_to_end(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(run_dir), *TINY,
                       "--set", "train.label_smoothing=0.1", "--set", "augment.mixup_alpha=0.2",
                       "--set", "augment.cutmix_alpha=1.0", "--set", "augment.rand_augment_ops=2",
                       "--set", "augment.random_erasing=0.25", "--set", "train.class_weight=balanced",
                       "--set", "train.optimizer=adamw", "--set", "train.weight_decay=0.05",
                       "--set", "train.schedule=cosine", "--set", "train.epochs=2",
                       "--set", "train.warmup_epochs=1"])
    assert code == 0
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {"accuracy", "top5", "val_accuracy", "loss"} <= set(rows[0])
    assert all(math.isfinite(float(row["loss"])) for row in rows)

    # The checkpoint names our optimizer and schedule; a process that never imported the
    # training package (explanation, serving) still loads it.
    script = ("import sys; from keras_caltech.models.loading import load_model_safely; "
              "model = load_model_safely(sys.argv[1]); "
              "assert 'keras_caltech.training' not in sys.modules; print(model.output_shape)")
    result = subprocess.run([sys.executable, "-c", script, str(run_dir / "best.keras")],
                            capture_output=True, text=True, timeout=300,
                            cwd=pathlib.Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(None, 4)" in result.stdout
