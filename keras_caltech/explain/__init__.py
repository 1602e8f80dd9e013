"""Explanations of classifier decisions.

Every explainer takes the model as trained (float32 RGB 0-255 images in, logits out,
nested backbones and Sequential models included) and never changes it::

    cam = GradCam(model)                      # the registered gradcam_layer by default
    result = cam(images, class_indices=None)  # None: explain the predicted classes
    result.heatmaps, result.empty             # (batch, h, w) in [0, 1], (batch,) bool
    figure = explanation_figure(images[0], result.heatmaps[0], title)

Modules: ``model_layers`` (finding layers, tapping activations), ``receptive_field``,
``gradcam`` (Grad-CAM, Grad-CAM++, Score-CAM), ``guided`` (gradients, guided
backpropagation from a class or one channel's neuron, guided Grad-CAM), ``views``
(feature maps, top patches of a channel or of a class logit), ``scoring``
(pointing game, energy, deletion/insertion) and ``sanity`` (parameter randomisation).
What ``explain.py`` calls: ``image_files`` (image files to figures), ``runs`` (a run
folder's model, class names and test split), ``gallery`` (a run's sample, mistakes and
top patches) and ``assess`` (``--evaluate``: scores a run's explanations, with
``localisation_scores`` and ``faithfulness_scores``). The figures are drawn by
``keras_caltech.plotting.explanations`` and written by ``plotting.figures.save_figure``,
both re-exported here.
"""

from keras_caltech.explain.gradcam import (CamResult, GradCam, GradCamPlusPlus, ScoreCam,
                                           upsample)
from keras_caltech.explain.guided import (ChannelGradients, GuidedBackprop,
                                          GuidedChannelBackprop, GuidedGradCam, InputGradients,
                                          guided_model)
from keras_caltech.explain.model_layers import (default_layer_name, find_layer,
                                                spatial_layer_names, tap_model)
from keras_caltech.explain.receptive_field import ReceptiveField, receptive_field
from keras_caltech.explain.sanity import cascading_randomization, spearman_correlation
from keras_caltech.explain.scoring import (centre_point_baseline, deletion_curve,
                                           energy_in_box, faithfulness, grid_pointing_game,
                                           insertion_curve, make_mosaic, pointing_game)
from keras_caltech.explain.views import class_evidence, feature_maps, top_activating_patches
from keras_caltech.plotting.explanations import (downscale, explanation_figure, feature_map_figure,
                                                 gradient_figure, overlay, patches_figure,
                                                 prediction_title)
from keras_caltech.plotting.figures import save_figure

__all__ = [
    "CamResult", "ChannelGradients", "GradCam", "GradCamPlusPlus", "GuidedBackprop",
    "GuidedChannelBackprop", "GuidedGradCam", "InputGradients", "ReceptiveField", "ScoreCam",
    "cascading_randomization", "centre_point_baseline", "class_evidence", "default_layer_name",
    "deletion_curve", "downscale", "energy_in_box", "explanation_figure", "faithfulness",
    "feature_map_figure", "feature_maps", "find_layer", "gradient_figure", "grid_pointing_game",
    "guided_model", "insertion_curve", "make_mosaic", "overlay", "patches_figure", "pointing_game",
    "prediction_title", "receptive_field", "save_figure", "spatial_layer_names",
    "spearman_correlation", "tap_model", "top_activating_patches", "upsample",
]
