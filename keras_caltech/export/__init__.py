"""Export for TF Serving: a SavedModel that takes image bytes, answers with
class names, and can explain itself.

Modules: ``saved_model`` (the three signatures, writing ``BASE_DIR/NAME/VERSION/``),
``heatmap`` (Grad-CAM as graph ops), ``layout`` (TF Serving's version folders),
``predict`` (classifying files with a SavedModel alone) and ``cli`` (the
``export`` and ``predict`` commands). Import the submodule you need: ``predict`` and
``layout`` need TensorFlow only, not the models or the training code.
"""
