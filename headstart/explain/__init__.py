"""Why the model decided: Grad-CAM heat maps of a run's predictions (``predict --explain``, the report's top
losses). :func:`grad_cam` gives the maps, :func:`explain_records` writes them beside a command's predictions."""

from headstart.explain.gradcam import cam_layer, grad_cam, peak
from headstart.explain.overlay import explain_records, heatmap_images, overlay, torch_run

__all__ = ["cam_layer", "explain_records", "grad_cam", "heatmap_images", "overlay", "peak", "torch_run"]
