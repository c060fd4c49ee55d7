"""Models: the Transformer backbone (`backbone`), per-modality input embeddings (`embeddings`)
and the multimodal model that joins them (`multimodal`). Import the submodules directly; this
package stays light so that `import fmmm.models` does not import torch."""
