"""Export for TF Serving: a tiny trained run is exported once, then a fresh Python process
that imports only TensorFlow loads the SavedModel and calls every signature; its answers
must equal the evaluation pipeline's, and bad images must fail loudly, never silently."""

import json
import os
import subprocess
import sys

import image_bombs
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_bad_files
from test_train import TINY

import train
from keras_caltech.data.pipeline import load_image
from keras_caltech.export import cli, saved_model
from keras_caltech.models import get_model_entry
from keras_caltech.models.loading import load_model_safely

IMAGE_SIZE = 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter with TensorFlow alone, as a TF Serving client's code would.
# argv: version folder, request JSON, output .npz. Writes every signature's outputs.
CLIENT_SCRIPT = r'''
import json, sys
import numpy as np
import tensorflow as tf

version_dir, request_path, output_path = sys.argv[1:]
request = json.load(open(request_path))
signatures = tf.saved_model.load(version_dir).signatures
good = [open(path, "rb").read() for path in request["good_files"]]
out = {}

def answer(name, **inputs):
    outputs = {key: value.numpy() for key, value in signatures[name](**inputs).items()}
    # Byte strings become unicode arrays, which .npz stores without pickling.
    return {key: value.astype(str) if value.dtype == object else value for key, value in outputs.items()}

served = answer("serving_default", image_bytes=tf.constant(good))
for key, value in served.items():
    out["serving_default/" + key] = value
pixels = np.load(request["pixels"])
for index in range(len(good)):  # one call per image: every size differs
    images = tf.constant(pixels[f"image{index}"][None])
    out[f"predict_images/probabilities/{index}"] = answer("predict_images", images=images)["probabilities"]
for key, value in answer("gradcam", image_bytes=tf.constant(good)).items():
    out["gradcam/" + key] = value

truncated = good[0][: len(good[0]) // 2]
bad_batches = {"empty string": [b""], "not an image": [b"this is text, not a JPEG"],
               "truncated jpeg": [truncated], "good and bad mixed": [good[0], truncated, good[1]]}
failures = {}
for case, batch in bad_batches.items():
    for name in ("serving_default", "gradcam"):
        try:
            answer(name, image_bytes=tf.constant(batch))
            failures[f"{name}/{case}"] = ["answered", ""]
        except tf.errors.InvalidArgumentError as error:
            failures[f"{name}/{case}"] = [type(error).__name__, error.message]
# Still serving, with the same answers, after the refusals.
out["serving_default/probabilities_after_errors"] = answer(
    "serving_default", image_bytes=tf.constant(good))["probabilities"]

def describe(function):
    inputs = function.structured_input_signature[1]  # {name: TensorSpec}
    return {"inputs": {key: spec.dtype.name for key, spec in inputs.items()},
            "outputs": sorted(function.structured_outputs)}

metadata = {"failures": failures, "keras_caltech_imported": any(m.startswith("keras_caltech") for m in sys.modules),
            "signatures": {name: describe(function) for name, function in signatures.items()}}
np.savez(output_path, **{key: np.asarray(value) for key, value in out.items()})
print(json.dumps(metadata))
'''


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory):
    """A one-epoch run exported by the trainer itself, plus odd and broken image files."""
    base = tmp_path_factory.mktemp("export")
    run_dir = base / "runs" / "tiny"
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(run_dir), *TINY,
                       "--set", "augment.rotation=0.05",  # a random layer that must stay out of the export
                       "--set", "export.enabled=true", "--set", f"export.base_dir={base / 'saved_models'}"])
    assert code == 0
    odd = base / "odd"
    odd.mkdir()
    usable, broken = write_bad_files(odd)  # grayscale, CMYK, PNG with alpha, GIF, BMP; truncated, empty, text
    splits = json.loads((run_dir / "splits.json").read_text())
    good_files = ([f"{splits['root']}/{path}" for path, _ in splits["test"][:4]]
                  + [str(odd / name) for name in usable])
    return {"run_dir": run_dir, "base": base, "version_dir": base / "saved_models" / "tiny" / "1",
            "good_files": good_files, "bad_files": [str(odd / name) for name in broken],
            "class_names": json.loads((run_dir / "class_names.json").read_text())}


@pytest.fixture(scope="module")
def client_answers(exported, tmp_path_factory):
    """What a TensorFlow-only process gets from each signature of the exported model."""
    work = tmp_path_factory.mktemp("client")
    pixels = {f"image{index}": tf.io.decode_image(open(path, "rb").read(), channels=3,
                                                  expand_animations=False).numpy().astype("float32")
              for index, path in enumerate(exported["good_files"])}
    np.savez(work / "pixels.npz", **pixels)
    (work / "request.json").write_text(json.dumps({"good_files": exported["good_files"],
                                                   "pixels": str(work / "pixels.npz")}))
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, str(exported["version_dir"]), str(work / "request.json"),
         str(work / "answers.npz")],
        cwd=work, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})  # no PYTHONPATH: keras_caltech unreachable
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads(result.stdout.strip().splitlines()[-1])
    answers = dict(np.load(work / "answers.npz", allow_pickle=False))
    return answers, metadata


@pytest.fixture(scope="module")
def best_model(exported):
    return load_model_safely(exported["run_dir"] / "best.keras")


def test_the_client_process_never_imported_keras_caltech(client_answers):
    _, metadata = client_answers
    assert metadata["keras_caltech_imported"] is False


def test_signatures_take_image_bytes_or_pixels_and_name_their_outputs(client_answers):
    _, metadata = client_answers
    signatures = metadata["signatures"]
    classify = ["probabilities", "top_k_classes", "top_k_names", "top_k_scores"]
    assert signatures["serving_default"] == {"inputs": {"image_bytes": "string"}, "outputs": classify}
    assert signatures["predict_images"] == {"inputs": {"images": "float32"}, "outputs": classify}
    assert signatures["gradcam"] == {"inputs": {"image_bytes": "string"},
                                     "outputs": ["class_index", "class_name", "empty", "heatmap", "score"]}


def test_served_probabilities_equal_the_evaluation_pipeline_for_every_image_format(
        exported, client_answers, best_model):
    answers, _ = client_answers
    images = np.stack([load_image(path, IMAGE_SIZE) for path in exported["good_files"]])
    expected = tf.nn.softmax(best_model(images, training=False)).numpy()
    np.testing.assert_allclose(answers["serving_default/probabilities"], expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(answers["serving_default/probabilities_after_errors"],
                                  answers["serving_default/probabilities"])


def test_top_k_names_and_scores_are_the_most_probable_classes_by_their_folder_names(exported, client_answers):
    answers, _ = client_answers
    probabilities = answers["serving_default/probabilities"]
    classes = answers["serving_default/top_k_classes"]
    k = min(5, len(exported["class_names"]))
    assert classes.shape == (len(exported["good_files"]), k)
    np.testing.assert_array_equal(classes, np.argsort(-probabilities, axis=1, kind="stable")[:, :k])
    names = answers["serving_default/top_k_names"].tolist()
    assert names == [[exported["class_names"][index] for index in row] for row in classes]
    np.testing.assert_allclose(answers["serving_default/top_k_scores"],
                               np.take_along_axis(probabilities, classes, axis=1), rtol=0, atol=0)


def test_predict_images_resizes_pixels_of_any_size_exactly_as_decoding_does(exported, client_answers):
    answers, _ = client_answers
    for index in range(len(exported["good_files"])):
        np.testing.assert_allclose(answers[f"predict_images/probabilities/{index}"][0],
                                   answers["serving_default/probabilities"][index], atol=1e-6, rtol=0)


def eager_gradcam(model, images):
    """Textbook Grad-CAM, one image at a time in eager mode: the reference for the export.

    Returns:
        (heatmaps (n, size, size) in [0, 1], class indices (n,)).
    """
    taps = keras.Model(model.inputs, [model.get_layer(get_model_entry(model.name).gradcam_layer).output,
                                      model.outputs[0]])
    heatmaps, classes = [], []
    for image in images:
        image = tf.constant(image[None])
        with tf.GradientTape() as tape:
            tape.watch(image)
            activations, logits = taps(image, training=False)
            class_index = int(np.argmax(logits[0]))
            score = logits[0, class_index]
        gradients = tape.gradient(score, activations)[0].numpy()  # (h, w, c)
        weights = gradients.mean(axis=(0, 1))  # (c,)
        cam = np.maximum(activations[0].numpy() @ weights, 0.0)  # (h, w)
        cam = cam / cam.max() if cam.max() > 0 else cam
        heatmaps.append(tf.image.resize(cam[..., None], image.shape[1:3], method="bilinear")[..., 0].numpy())
        classes.append(class_index)
    return np.clip(np.stack(heatmaps), 0.0, 1.0), np.array(classes)


def explain_module_heatmaps(model, images):
    """The explain module's Grad-CAM at the input size: the exported heatmap must equal it."""
    from keras_caltech import explain

    result = explain.GradCam(model)(images)
    return explain.upsample(result.heatmaps, images.shape[1:3]), np.asarray(result.class_indices)


@pytest.mark.parametrize("reference", [eager_gradcam, explain_module_heatmaps],
                         ids=["eager_reference", "explain_module"])
def test_the_exported_gradcam_heatmap_equals_the_reference_for_the_same_image(
        exported, client_answers, best_model, reference):
    answers, _ = client_answers
    images = np.stack([load_image(path, IMAGE_SIZE) for path in exported["good_files"]])
    heatmaps, classes = reference(best_model, images)
    np.testing.assert_array_equal(answers["gradcam/class_index"], classes)
    assert answers["gradcam/heatmap"].shape == (len(images), IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_allclose(answers["gradcam/heatmap"], heatmaps, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(answers["gradcam/empty"], heatmaps.max(axis=(1, 2)) == 0)
    assert not answers["gradcam/empty"].all(), "every map is empty: the comparison proves nothing"
    assert answers["gradcam/class_name"].tolist() == [exported["class_names"][index] for index in classes]
    np.testing.assert_allclose(answers["gradcam/score"],
                               answers["serving_default/probabilities"][np.arange(len(images)), classes], atol=1e-6)


def two_evidence_model():
    """Taps of a hand-set model: class 0 = 1 + mean of channel 0 - mean of channel 1, class 1 =
    mean of channel 1 - mean of channel 0.

    Images (batch, 8, 8, 2) -> [features (batch, 4, 4, 2) = 2x2 average pools, logits (batch, 2)].
    """
    images = keras.Input((8, 8, 2))
    features = keras.layers.AveragePooling2D(2, name="features")(images)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    logits = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant([[1.0, -1.0], [-1.0, 1.0]]),
                                bias_initializer=keras.initializers.Constant([1.0, 0.0]))(pooled)
    return keras.Model(images, [features, logits])


def test_the_exported_heatmap_keeps_only_evidence_for_the_class_and_never_divides_by_zero():
    from keras_caltech.export.heatmap import gradcam_heatmaps
    taps = two_evidence_model()
    images = np.zeros((4, 8, 8, 2), np.float32)
    images[0, :4, :4, 0] = 1.0  # evidence for class 0, top left ...
    images[0, 4:, 4:, 1] = 0.5  # ... and weaker evidence against it, bottom right
    images[1, :4, :4, 1] = 8.0  # evidence for class 1 only
    images[2] = 1.0  # both channels equal: the map is zero everywhere
    images[3, :, :, 0] = -0.25  # class 0 wins by its bias while the image argues against it ...
    images[3, :2, :2, 0] = 1e-9  # ... but for rounding noise in one corner

    result = {key: value.numpy() for key, value in
              tf.function(lambda batch: gradcam_heatmaps(taps, batch))(tf.constant(images)).items()}

    assert result["class_index"].tolist() == [0, 1, 0, 0]
    heatmap = result["heatmap"]
    assert heatmap.shape == (4, 8, 8) and np.isfinite(heatmap).all()
    np.testing.assert_allclose(heatmap[0, :3, :3], 1.0)  # the evidence, at full strength
    np.testing.assert_allclose(heatmap[0, 5:, 5:], 0.0)  # counter-evidence is cut by the ReLU
    np.testing.assert_allclose(heatmap[1, :3, :3], 1.0)
    np.testing.assert_allclose(heatmap[1, 5:, :], 0.0)
    assert result["empty"].tolist() == [False, False, True, True]
    assert not heatmap[2].any() and not heatmap[3].any()


@pytest.mark.parametrize("case, message", [
    ("empty string", "Input is empty"),
    ("not an image", "Unknown image file format"),
    ("truncated jpeg", "Invalid JPEG data"),
    ("good and bad mixed", "Invalid JPEG data"),
])
@pytest.mark.parametrize("signature", ["serving_default", "gradcam"])
def test_bad_image_bytes_fail_the_request_with_invalid_argument(client_answers, signature, case, message):
    _, metadata = client_answers
    error_type, error_message = metadata["failures"][f"{signature}/{case}"]
    assert error_type == "InvalidArgumentError" and message in error_message


def graph_names(graph_def):
    """Every (op type, node name) of a GraphDef, its function library included."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return [(node.op, node.name) for node in nodes]


def augmentation_nodes(graph_def):
    return [(op, name) for op, name in graph_names(graph_def)
            if "random" in op.lower() or "random" in name.lower() or "augment" in name.lower()]


def test_no_augmentation_or_random_op_is_in_the_exported_graph(exported):
    from tensorflow.core.protobuf import saved_model_pb2
    saved_model = saved_model_pb2.SavedModel.FromString((exported["version_dir"] / "saved_model.pb").read_bytes())
    (meta_graph,) = saved_model.meta_graphs
    assert any(op == "DecodeImage" for op, _ in graph_names(meta_graph.graph_def))  # the search sees inside map_fn
    assert augmentation_nodes(meta_graph.graph_def) == []

    # The check itself finds an augmentation layer when one is there.
    flip = keras.layers.RandomFlip("horizontal", name="augment_flip")
    traced = tf.function(lambda images: flip(images, training=True)).get_concrete_function(
        tf.TensorSpec((None, 8, 8, 3), tf.float32))
    assert augmentation_nodes(traced.graph.as_graph_def())


def test_export_command_writes_the_next_version_and_refuses_an_existing_one(exported, capsys):
    run_dir, base = str(exported["run_dir"]), str(exported["base"] / "saved_models")
    assert cli.export_main([run_dir, "--base-dir", base, "--version", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "already exists" in err[0] and "next free: 2" in err[0]

    assert cli.export_main([run_dir, "--base-dir", base]) == 0
    assert (exported["base"] / "saved_models" / "tiny" / "2" / "saved_model.pb").is_file()
    assert not [path.name for path in (exported["base"] / "saved_models" / "tiny").iterdir()
                if path.name not in ("1", "2")], "no staging folder is left behind"

    assert cli.export_main([run_dir, "--base-dir", base, "--version", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err
    assert cli.export_main([str(exported["base"]), "--base-dir", base]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_predict_prints_the_top_classes_per_image_and_one_error_line_per_bad_file(exported, capsys):
    good, bad = exported["good_files"][:3], exported["bad_files"]
    model_dir = exported["base"] / "saved_models" / "tiny"
    code = cli.predict_main(["--model", str(model_dir), *good, *bad, str(exported["base"] / "missing.jpg")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.out.splitlines()
    k = min(5, len(exported["class_names"]))
    assert lines[::k + 1] == good and len(lines) == len(good) * (k + 1)
    assert all(line.split()[-1] in exported["class_names"] for index, line in enumerate(lines) if index % (k + 1))
    err = captured.err.strip().splitlines()
    assert len(err) == len(bad) + 1 and all(line.startswith("error: ") for line in err)
    assert all(path in line for path, line in zip(bad, err))
    assert "not a readable image" in err[0] and "missing.jpg: cannot read the file" in err[-1]


@pytest.mark.parametrize("layout, message", [
    ("no versions", "holds no SavedModel"),
    ("damaged saved_model.pb", "could not load the SavedModel in"),
    ("missing", "SavedModel folder not found"),
])
def test_predict_refuses_a_folder_without_a_usable_saved_model(tmp_path, capsys, layout, message):
    if layout == "no versions":
        (tmp_path / "tiny" / "notes").mkdir(parents=True)
    elif layout == "damaged saved_model.pb":
        (tmp_path / "tiny" / "3").mkdir(parents=True)
        (tmp_path / "tiny" / "3" / "saved_model.pb").write_bytes(b"not a protocol buffer")
    assert cli.predict_main(["--model", str(tmp_path / "tiny"), "image.jpg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_export_staging_folder_is_removed_when_the_version_appears_meanwhile(exported, tmp_path, monkeypatch):
    from keras_caltech.errors import UserError
    from keras_caltech.export import saved_model

    class SlowArchive:  # another export writes version 1 while this one is writing
        def write_out(self, path, verbose=False):
            (tmp_path / "tiny" / "1").mkdir(parents=True)

    monkeypatch.setattr(saved_model, "build_archive", lambda model, class_names, resize_crop=0: SlowArchive())
    with pytest.raises(UserError, match="appeared while exporting"):
        saved_model.export_model(None, [], tmp_path, "tiny", version=1)
    assert [path.name for path in (tmp_path / "tiny").iterdir()] == ["1"]


def test_the_serving_benchmark_runs_end_to_end_on_a_tiny_configuration(exported, capsys):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "serving.py"
    spec = importlib.util.spec_from_file_location("serving_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(["--run", str(exported["run_dir"]), "--saved-model", str(exported["version_dir"]),
                           "--batch-size", "4", "--repeats", "2", "--source-size", "40"]) == 0
    out = capsys.readouterr().out
    assert "serving_default" in out and "keras model" in out and "p95" in out



def test_a_run_trained_on_crops_is_served_its_central_crop_as_in_evaluation(exported, best_model, tmp_path):
    version_dir = saved_model.export_model(best_model, exported["class_names"], tmp_path, "cropped",
                                           resize_crop=IMAGE_SIZE + 8)
    loaded = tf.saved_model.load(str(version_dir))
    files = exported["good_files"][:4]
    images = np.stack([load_image(path, IMAGE_SIZE, resize_crop=IMAGE_SIZE + 8) for path in files])
    expected = tf.nn.softmax(best_model(images, training=False)).numpy()
    served = loaded.signatures["serving_default"](
        image_bytes=tf.constant([open(path, "rb").read() for path in files]))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-4)
    decoded = tf.io.decode_image(open(files[0], "rb").read(), channels=3, expand_animations=False)
    from_pixels = loaded.signatures["predict_images"](images=tf.cast(decoded, tf.float32)[None])
    np.testing.assert_allclose(from_pixels["probabilities"].numpy(), expected[:1], atol=1e-4)
    whole = tf.nn.softmax(best_model(np.stack([load_image(files[0], IMAGE_SIZE)]), training=False)).numpy()
    assert not np.allclose(whole, expected[:1], atol=1e-4)  # the crop matters: not the whole-image answer


def test_resuming_a_finished_run_does_not_export_an_identical_version_again(exported, tmp_path, capsys):
    from conftest import copy_run

    run_dir = copy_run(exported["run_dir"], tmp_path / "tiny")  # the same name, so the same served model
    versions = sorted(path.name for path in exported["version_dir"].parent.iterdir())
    assert train.main(["--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"already exported to {exported['version_dir'].resolve()}" in out
    assert f"SavedModel for TF Serving: {exported['version_dir'].resolve()}" in out
    assert sorted(path.name for path in exported["version_dir"].parent.iterdir()) == versions


# Runs like CLIENT_SCRIPT (TensorFlow alone) but under an address-space limit, so an image
# the SavedModel failed to refuse fails the test instead of exhausting the machine.
# argv: version folder, request JSON. Prints {case: [outcome, message]}.
HOSTILE_CLIENT_SCRIPT = r'''
import json, sys
import numpy as np
import tensorflow as tf

version_dir, request_path = sys.argv[1:]
request = json.load(open(request_path))
signatures = tf.saved_model.load(version_dir).signatures
good = open(request["good_file"], "rb").read()
outcomes = {}

def record(case, name, **inputs):
    try:
        outputs = signatures[name](**inputs)
        outcomes[f"{name}/{case}"] = ["answered", str({key: value.shape.as_list() for key, value in outputs.items()})]
    except tf.errors.OpError as error:  # InvalidArgument is a refusal; ResourceExhausted means it was decoded
        outcomes[f"{name}/{case}"] = [type(error).__name__, error.message]

for case, path in request["files"].items():
    for name in ("serving_default", "gradcam"):
        record(case, name, image_bytes=tf.constant([good, open(path, "rb").read()]))
for name in ("serving_default", "gradcam"):
    record("empty batch", name, image_bytes=tf.zeros([0], tf.string))
record("empty batch", "predict_images", images=tf.zeros([0, 40, 40, 3]))
for case, value in (("nan pixel", np.nan), ("infinite pixel", np.inf)):
    pixels = np.full((2, 40, 40, 3), 128.0, np.float32)
    pixels[1, 7, 9, 2] = value
    record(case, "predict_images", images=tf.constant(pixels))
print(json.dumps(outcomes))
'''

# name -> (file made on the fly, what the served model must answer: "answered" or a message part).
HOSTILE_FILES = {
    "lossless webp of 16383x16383": (lambda: image_bombs.lossless_webp(16383, 16383), "limit of 50000000 pixels"),
    "webp whose VP8X canvas is 16383x16383": (lambda: image_bombs.extended_webp(8, 8, canvas=(16383, 16383)),
                                               "limit of 50000000 pixels"),
    "png of 20000x20000 zeros": (lambda: image_bombs.blank_png(20000, 20000), "limit of 50000000 pixels"),
    "gif: 8x8 screen, 12000x12000 frame": (lambda: image_bombs.gif([(8, 8)], declared={0: (12000, 12000)}),
                                           "limit of 50000000 pixels"),
    "gif: frames of 20000x1 and 1x20000": (lambda: image_bombs.gif([(20000, 1), (1, 20000)]),
                                           "limit of 50000000 pixels"),
    "gif: two 7000x7000 frames": (
        lambda: image_bombs.gif([(8, 8), (8, 8)], declared={0: (7000, 7000), 1: (7000, 7000)}),
        "limit of 50000000 pixels"),
    "jpeg xl": (lambda: b"\xff\x0a" + bytes(30), "its size cannot be read from its header"),
    "png of exactly 50000000 pixels": (lambda: image_bombs.blank_png(10000, 5000), "answered"),
    "png of 50010000 pixels": (lambda: image_bombs.blank_png(10000, 5001), "limit of 50000000 pixels"),
}


@pytest.fixture(scope="module")
def hostile_answers(exported, tmp_path_factory):
    """What a TensorFlow-only process under an address-space limit gets for hostile requests."""
    work = tmp_path_factory.mktemp("hostile")
    files = {}
    for index, (case, (make, _)) in enumerate(HOSTILE_FILES.items()):
        files[case] = str(work / f"image{index}.jpg")  # the extension is not what the decoder goes by
        (work / f"image{index}.jpg").write_bytes(make())
    (work / "request.json").write_text(json.dumps({"good_file": exported["good_files"][0], "files": files}))
    result = image_bombs.run_limited(
        ["-c", HOSTILE_CLIENT_SCRIPT, str(exported["version_dir"]), str(work / "request.json")], cwd=work,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", HOSTILE_FILES)
@pytest.mark.parametrize("signature", ["serving_default", "gradcam"])
def test_an_image_over_the_pixel_limit_fails_the_request_from_its_header_before_decoding(
        hostile_answers, signature, case):
    outcome, message = hostile_answers[f"{signature}/{case}"]
    expected = HOSTILE_FILES[case][1]
    if expected == "answered":
        assert outcome == "answered", message
    else:
        assert outcome == "InvalidArgumentError" and expected in message and "image refused" in message, message


@pytest.mark.parametrize("signature", ["serving_default", "gradcam", "predict_images"])
def test_an_empty_request_is_refused_with_a_clear_message(hostile_answers, signature):
    outcome, message = hostile_answers[f"{signature}/empty batch"]
    assert outcome == "InvalidArgumentError" and "the request holds no image" in message, message


@pytest.mark.parametrize("case", ["nan pixel", "infinite pixel"])
def test_predict_images_refuses_pixels_that_are_not_finite(hostile_answers, case):
    outcome, message = hostile_answers[f"predict_images/{case}"]
    assert outcome == "InvalidArgumentError" and "every pixel must be a finite number" in message, message


def test_predict_names_an_image_over_the_pixel_limit_without_sending_it(exported, tmp_path):
    (tmp_path / "bomb.gif").write_bytes(image_bombs.gif([(20000, 1), (1, 20000)]))
    (tmp_path / "xl.jpg").write_bytes(b"\xff\x0a" + bytes(30))
    good = exported["good_files"][0]
    model_dir = exported["base"] / "saved_models" / "tiny"
    result = image_bombs.run_limited(  # a regression would decode the bomb: limited
        ["-m", "keras_caltech", "predict", "--model", str(model_dir), str(tmp_path / "bomb.gif"), good,
         str(tmp_path / "xl.jpg")], env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip().splitlines()
    assert err[0] == (f"error: {tmp_path / 'bomb.gif'}: too large (20000x20000 pixels; limit 50000000 pixels, "
                      "MAX_PIXELS in keras_caltech/data/pixel_limit.py)")
    assert err[1].startswith(f"error: {tmp_path / 'xl.jpg'}: JPEG XL is refused") and len(err) == 2
    assert result.stdout.splitlines()[0] == good  # the good image in between is still answered


def test_an_export_version_beyond_int64_is_refused_in_one_line(exported, tmp_path, monkeypatch, capsys):
    from keras_caltech.errors import UserError

    run_dir, base = str(exported["run_dir"]), str(tmp_path / "saved_models")
    assert cli.export_main([run_dir, "--base-dir", base, "--version", str(10 ** 20)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the version must be at most 2**63 - 1"), err
    assert not (tmp_path / "saved_models").exists()

    class EmptyArchive:
        def write_out(self, path, verbose=False):
            pass

    monkeypatch.setattr(saved_model, "build_archive", lambda model, class_names, resize_crop=0: EmptyArchive())
    with pytest.raises(UserError, match="at most 2\\*\\*63 - 1"):
        saved_model.export_model(None, [], tmp_path, "tiny", version=2 ** 63)
    assert saved_model.export_model(None, [], tmp_path, "tiny", version=2 ** 63 - 1).name == str(2 ** 63 - 1)
