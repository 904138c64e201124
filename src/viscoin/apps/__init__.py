"""Interactive applications on top of a trained VisCoIN.

- `viscoin.apps.explorer`: `ConceptExplorer`, the model side of the concept explorer (select an
  image, edit its concepts by λ, concept pages); plain tensors and arrays, no web framework;
- `viscoin.apps.explore`: the `viscoin explore` web app (Gradio, the optional extra
  ``viscoin[app]``) around it, and the command's hooks for `viscoin.cli`.

Gradio is imported only when the app is built, so `viscoin` works without the extra.
"""

from viscoin.apps.explorer import ConceptExplorer, ConceptPage, Edit, Selection, UploadError

__all__ = ["ConceptExplorer", "ConceptPage", "Edit", "Selection", "UploadError"]
