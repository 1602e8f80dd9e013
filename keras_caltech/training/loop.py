"""The training loop: Keras' own train and test steps and callbacks, under any tf.distribute strategy.

Why not ``model.fit``: Keras 3's fit fails under tf.distribute.MultiWorkerMirroredStrategy
(keras-team/keras#20585; here it dies reducing the scalar metrics with ``axis=0``), and
it draws each epoch's data from an iterator whose shuffle order depends on how many
epochs the dataset object has served, which a resumed process cannot reproduce. This
loop keeps one code path for every strategy (one device, mirrored, multi-worker):

- each epoch's batches come from ``epoch_batches(epoch)``, a pure function of the epoch;
- each step is ``model.train_step`` (loss, loss scaling, gradients, optimizer, metrics:
  exactly what fit runs) inside ``strategy.run``, compiled with tf.function (XLA if
  ``jit_compile``), and its metrics are averaged over replicas as fit does. A batch of
  (images, labels, sample weights) weights the loss and metrics as fit does; fit's
  ``class_weight`` becomes such weights in the pipeline (training/recipes.py);
- validation runs ``model.test_step`` the same way;
- ``keras.callbacks.CallbackList`` drives the callbacks, the progress bar and History
  with the same calls and logs as fit, so Keras callbacks work unchanged.
"""

import keras
import tensorflow as tf


def _distributed(step, strategy, jit_compile):
    """Wraps a per-replica step (train_step or test_step) as one compiled, distributed call."""

    def run(batch):
        per_replica = strategy.run(step, args=(batch,))
        # Mean over replicas, as fit does; axis=None because the values are scalars
        # (fit's multi-worker branch passes axis=0 and fails: keras-team/keras#20585).
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in per_replica.items()}

    return tf.function(run, reduce_retracing=True, jit_compile=jit_compile)


def _for_strategy(dataset, strategy):
    """Splits each global batch of ``dataset`` across the strategy's replicas."""
    options = tf.data.Options()
    # Every worker reads the same stream and keeps its share of each global batch, so the
    # batches are the ones a single device would see, whatever the file count per worker.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def build_training_state(model, strategy, dataset):
    """Creates the optimizer's and the compiled metrics' variables before training.

    fit does this symbolically; here one eager forward pass on a batch of zeros shaped
    like ``dataset``'s does it in the strategy's scope. (Created lazily inside the first
    replicated step instead, they fail under MirroredStrategy with 2+ devices.) Nothing is
    trained, and ``dataset`` is not read: one batch of a cached or shuffled dataset would
    decode many images.
    """
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(tuple(
        tf.zeros([1, *spec.shape[1:]], spec.dtype) for spec in dataset.element_spec))
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
        logits = model(images, training=False)
        model.compute_loss(images, labels, logits)
        model.compute_metrics(images, labels, logits, sample_weight=None)
    model.reset_metrics()


def fit(model, strategy, epoch_batches, *, epochs, steps_per_epoch, initial_epoch=0, validation_data=None,
        callbacks=(), verbose=2, jit_compile=False):
    """Trains a compiled model like ``model.fit``, under ``strategy``.

    Args:
        model: a compiled Keras model built in ``strategy.scope()``, with its training
            state built by :func:`build_training_state`.
        strategy: a tf.distribute strategy.
        epoch_batches: ``epoch -> tf.data.Dataset`` of (images, labels) or (images,
            labels, sample weights) global batches.
        epochs: index of the last epoch + 1, as in fit.
        steps_per_epoch: batches per epoch (for the progress bar).
        initial_epoch: the 0-based epoch to start at (a resumed run's completed epochs).
        validation_data: a dataset of (images, labels) batches, or None.
        callbacks: Keras callbacks.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
        jit_compile: compile the steps with XLA.

    Returns:
        A ``keras.callbacks.History`` of the epochs this call trained, as fit returns.
    """
    train_step = _distributed(model.train_step, strategy, jit_compile)
    test_step = _distributed(model.test_step, strategy, jit_compile)
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        list(callbacks) + [history], add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps_per_epoch)
    validation = _for_strategy(validation_data, strategy) if validation_data is not None else None

    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step, batch in enumerate(_for_strategy(epoch_batches(epoch), strategy)):
            callback_list.on_train_batch_begin(step)
            logs = train_step(batch)
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = {name: float(value) for name, value in logs.items()}
        if validation is not None:
            epoch_logs.update({f"val_{name}": value for name, value in
                               _evaluate(model, test_step, validation, callback_list).items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


def _evaluate(model, test_step, dataset, callback_list):
    """Runs the test step over a distributed dataset; returns {metric: float}."""
    model.reset_metrics()
    callback_list.on_test_begin()
    logs = {}
    for step, batch in enumerate(dataset):
        callback_list.on_test_batch_begin(step)
        logs = test_step(batch)
        callback_list.on_test_batch_end(step, logs)
    logs = {name: float(value) for name, value in logs.items()}
    callback_list.on_test_end(logs)
    return logs
