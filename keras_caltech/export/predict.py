"""Classifying image files with an exported SavedModel alone (no Keras model, no run folder).

This is what a client of TF Serving sees: encoded bytes go in, class names come out. A
file over the pixel limit is refused here, from its header, before it is sent (the
SavedModel refuses it too; checking here names the file and spares the request).
"""

import dataclasses
import pathlib

import tensorflow as tf

from keras_caltech.data.pixel_limit import ImageRefused, check_pixels
from keras_caltech.errors import UserError
from keras_caltech.export.layout import resolve_version_dir

# Lines of a TensorFlow error that locate the failing op rather than say what was wrong.
_LOCATION_PREFIXES = ("Graph execution error", "Detected at node", "<stack traces", "[[")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The answer for one image file.

    Attributes:
        path: the image file.
        names: the top class names, most probable first; empty when ``error`` is set.
        scores: their probabilities.
        error: why the file could not be classified, or None.
    """

    path: pathlib.Path
    names: tuple = ()
    scores: tuple = ()
    error: str | None = None


def decoder_message(error):
    """The line of a TensorFlow InvalidArgumentError that says what was wrong with the input."""
    lines = [line.strip() for line in str(error.message).splitlines()]
    useful = [line for line in lines if line and not line.startswith(_LOCATION_PREFIXES)]
    return useful[0] if useful else lines[0]


class SavedModelClassifier:
    """The ``serving_default`` signature of an exported SavedModel.

    Args:
        path: ``saved_models/NAME/VERSION``, or ``saved_models/NAME`` for its highest version.

    Raises:
        UserError: no SavedModel there, a damaged one, or one without a ``serving_default``
            signature.
    """

    def __init__(self, path):
        self.path = resolve_version_dir(path)
        try:
            signatures = tf.saved_model.load(str(self.path)).signatures
        except (OSError, ValueError, tf.errors.OpError) as error:
            text = str(error).strip()
            first_line = text.splitlines()[0].rstrip(".") if text else type(error).__name__
            raise UserError(f"could not load the SavedModel in {self.path}: {first_line}. "
                            "Export it again with `python -m keras_caltech export runs/NAME`") from error
        if "serving_default" not in signatures:
            raise UserError(f"{self.path} has no serving_default signature; signatures: "
                            f"{', '.join(signatures) or '(none)'}. Export it with `python -m keras_caltech export`")
        self.signature = signatures["serving_default"]

    def classify(self, encoded_images):
        """Returns the signature's outputs as NumPy arrays for a list of encoded images.

        Raises:
            tf.errors.InvalidArgumentError: one of the images does not decode.
        """
        outputs = self.signature(image_bytes=tf.constant(encoded_images, dtype=tf.string))
        return {key: value.numpy() for key, value in outputs.items()}

    def predict_files(self, paths, batch_size=32):
        """Classifies image files, batch by batch; a bad file spoils only its own answer.

        Args:
            paths: image file paths.
            batch_size: images per call of the signature.

        Returns:
            One :class:`Prediction` per path, in order.
        """
        results = {}
        readable = []  # (path, bytes)
        for path in map(pathlib.Path, paths):
            try:
                encoded = path.read_bytes()
                check_pixels(encoded, str(path))  # from the header: a decompression bomb is never sent
                readable.append((path, encoded))
            except OSError as error:
                results[path] = Prediction(path, error=f"cannot read the file ({error.strerror})")
            except ImageRefused as refused:
                results[path] = Prediction(path, error=refused.reason)
        for start in range(0, len(readable), batch_size):
            batch = readable[start:start + batch_size]
            try:
                results.update(self._answers(batch, self.classify([encoded for _, encoded in batch])))
            except tf.errors.InvalidArgumentError:
                # The signature refuses the whole batch: ask again one by one to name the bad files.
                for path, encoded in batch:
                    try:
                        results.update(self._answers([(path, encoded)], self.classify([encoded])))
                    except tf.errors.InvalidArgumentError as error:
                        results[path] = Prediction(path, error=f"not a readable image: {decoder_message(error)}")
        return [results[pathlib.Path(path)] for path in paths]

    @staticmethod
    def _answers(batch, outputs):
        return {path: Prediction(path, names=tuple(name.decode() for name in outputs["top_k_names"][index]),
                                 scores=tuple(float(score) for score in outputs["top_k_scores"][index]))
                for index, (path, _) in enumerate(batch)}
