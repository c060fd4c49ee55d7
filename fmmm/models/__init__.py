"""Models: the Transformer backbone (`backbone`), modality encoders (`encoders`) and the
multimodal model that joins them (`multimodal`). Import the submodules directly; this package
stays light so that `import fmmm.models` does not import torch."""
