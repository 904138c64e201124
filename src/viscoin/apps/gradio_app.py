"""`viscoin explore [CHECKPOINT]`: the interactive concept explorer, a local web app (Gradio).

The paper presents VisCoIN's interpretation as an intuitive, interactive procedure (section 3.5,
figure 4): scale a concept's activation by λ and watch the generated image change. This app
serves it in the browser, on 127.0.0.1 by default:

- **Image** tab: pick a test image in the gallery or upload one; g's prediction beside f's, the
  input, its reconstruction, the edited image and its difference images (what the change adds and
  removes, appendix E), and the concepts ranked by local relevance; a few concept slots, each with
  a concept and a λ slider in [0, 4], all applied at once; "Reset" returns every λ to 1;
- **Concept page** tab: a concept's most relevant classes (global relevance), its most activating
  training samples and its λ sweep on several images.

The model side is `viscoin.apps.explorer.ConceptExplorer` (a slider move runs only Ω and G for
one image). The page works without any network: Gradio's analytics and version check are off,
fonts are the system's, nothing is fetched from a CDN, there is no share link. Every request is
guarded: a bad upload or a failing request shows its error in the page and the server goes on.

The command `viscoin explore` (`viscoin.cli.explore`) builds it. Gradio is the optional extra
``viscoin[app]``, imported only here, when the app is built.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viscoin.apps.explorer import LAMBDA_MAX, ConceptExplorer, Edit, Selection
from viscoin.interpret.explainer import DEFAULT_LAMBDAS
from viscoin.interpret.plot import difference_rgb, image_rgb

DIFF_FLOOR = 0.1          # a difference image is scaled by max(max |Δ|, this): tiny changes stay dark
CSS = """
#explore-status { min-height: 2.2em; }
.viscoin-pixels img { image-rendering: pixelated; }
"""


class MissingExtraError(ValueError):
    """An optional dependency is not installed (printed as one line by `viscoin.cli`)."""


def import_gradio() -> Any:
    """Gradio, with its analytics and version check off; a clear error when the extra is missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"     # read by gradio at import and by gr.Blocks
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError as exc:
        raise MissingExtraError("`viscoin explore` needs Gradio, the optional extra: "
                                "pip install 'viscoin[app]'") from exc
    return gr


# ---------------------------------------------------------------------------------------------
# Images for the page


def display_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] magnified by a whole factor (nearest neighbour: pixels stay sharp) to about `size`."""
    factor = max(1, round(size / max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def difference_images(edit: Edit) -> tuple[np.ndarray, np.ndarray]:
    """What the edit adds and what it removes (paper appendix E), on one scale (see `DIFF_FLOOR`)."""
    scale = max(float(edit.difference.abs().max()), DIFF_FLOOR)
    return difference_rgb(edit.difference, scale), difference_rgb(-edit.difference, scale)


def _fmt_probabilities(probs: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """{class name: probability} for gr.Label (names made unique)."""
    out: dict[str, float] = {}
    for c, p in enumerate(probs.tolist()):
        name = names[c] if names[c] not in out else f"{names[c]} ({c})"
        out[name] = float(p)
    return out


# ---------------------------------------------------------------------------------------------
# The app


class ExploreApp:
    """The Gradio app around a `ConceptExplorer`.

    The `on_*` handlers are plain methods that take the page's values and return ``{component:
    value}``; `build` creates the components and wires the events, so the handlers can be tested
    without a browser after `build()`. Every handler is guarded (`_guarded`): a user error or a
    failure of one request becomes a message in the page, never an error of the server.
    """

    def __init__(
        self,
        explorer: ConceptExplorer,
        slots: int = 4,                              # concepts that can be moved at once
        display: int = 256,                          # displayed image side (pixels)
        samples: int = 8,                            # most activating samples on a concept page
        sweeps: int = 3,                             # ... of which swept
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,  # λ of the concept page's sweeps
        title: str = "",                             # shown under the heading (e.g. the checkpoint)
    ) -> None:
        if slots < 1:
            raise ValueError(f"--slots: expected >= 1, got {slots}")
        self.explorer = explorer
        self.slots = min(slots, explorer.num_concepts)
        self.display = display
        self.samples, self.sweeps, self.lambdas = samples, sweeps, tuple(lambdas)
        self.title = title
        self.gr = import_gradio()
        self.blocks: Any = None

    # -- helpers ----------------------------------------------------------------------------------
    def _rgb(self, img: torch.Tensor, size: int | None = None) -> np.ndarray:
        """An image [3, R, R] in [-1, 1] as displayed: uint8, magnified to about `size` (default: `display`)."""
        return display_rgb(image_rgb(img), size or self.display)

    def _concept_choices(self, sel: Selection | None) -> list[tuple[str, int]]:
        if sel is None:
            return [(f"concept {j}", j) for j in range(self.explorer.num_concepts)]
        return [(f"concept {int(j)} · r = {float(r):+.2f}", int(j)) for j, r in zip(sel.concepts, sel.relevance)]

    def _edit_outputs(self, sel: Selection, edit: Edit) -> dict[Any, Any]:
        added, removed = difference_images(edit)
        if edit.factors:
            what = " · ".join(f"concept {j} × {lam:g}" for j, lam in sorted(edit.factors.items()))
        else:
            what = "every λ = 1: the reconstruction"
        return {self.edited: self._rgb(edit.image), self.added: display_rgb(added, self.display),
                self.removed: display_rgb(removed, self.display),
                self.status: f"{sel.source}: {what}"}

    def _concepts_table(self, sel: Selection, rows: int = 8) -> str:
        lines = ["| concept j | local relevance r | activation a |", "|---:|---:|---:|"]
        for j, r, a in list(zip(sel.concepts.tolist(), sel.relevance.tolist(), sel.activations.tolist()))[:rows]:
            lines.append(f"| {j} | {r:+.3f} | {a:.3f} |")
        names = self.explorer.class_names
        head = f"**{sel.source}**" + (f", true class **{names[sel.label]}**" if sel.label is not None else "")
        return (f"{head}. Concepts most relevant to g's prediction **{names[sel.g_class]}** "
                f"(r = a_j W_j,ĉ / max_l |a_l W_l,ĉ|):\n\n" + "\n".join(lines))

    # -- handlers ---------------------------------------------------------------------------------
    def on_select(self, sel: Selection) -> dict[Any, Any]:
        """Show a newly selected image: predictions, reconstruction, top concepts in the slots at λ = 1."""
        gr = self.gr
        names = self.explorer.class_names
        out: dict[Any, Any] = {
            self.state: sel,
            self.input_image: self._rgb(sel.image),
            self.reconstruction: self._rgb(sel.reconstruction),
            self.g_label: _fmt_probabilities(sel.g_probabilities, names),
            self.f_label: _fmt_probabilities(sel.f_probabilities, names),
            self.concepts_md: self._concepts_table(sel),
        }
        choices = self._concept_choices(sel)
        for s, (dd, sl) in enumerate(zip(self.slot_concepts, self.slot_lambdas)):
            out[dd] = gr.update(choices=choices, value=int(sel.concepts[s]))
            out[sl] = 1.0
        out.update(self._edit_outputs(sel, self.explorer.edit(sel, {})))
        g, f = sel.g_class, sel.f_class
        agree = "agree" if g == f else "disagree"
        out[self.status] = (f"{sel.source}: g predicts **{names[g]}** (p = {float(sel.g_probabilities[g]):.2f}), "
                            f"f predicts **{names[f]}** (p = {float(sel.f_probabilities[f]):.2f}): they {agree}")
        return out

    def on_gallery(self, position: int) -> dict[Any, Any]:
        """The gallery's image at `position` was clicked."""
        indices = self.explorer.gallery_indices
        if not 0 <= position < len(indices):
            raise ValueError(f"gallery: no image at position {position}")
        return self.on_select(self.explorer.select_test(indices[position]))

    def on_upload(self, path: str | None) -> dict[Any, Any]:
        """A file was uploaded: checked (size, type, pixels) before it is decoded."""
        if not path:
            return {}
        return self.on_select(self.explorer.select_upload(path, Path(path).name))

    def on_edit(self, sel: Selection | None, *values: Any) -> dict[Any, Any]:
        """A slider or a slot's concept moved: regenerate with every slot's (concept, λ) applied."""
        if sel is None:
            return {self.status: "Select an image first (gallery or upload)."}
        concepts, lambdas = values[:self.slots], values[self.slots:]
        changes = [(int(j), float(lam)) for j, lam in zip(concepts, lambdas) if j is not None and lam is not None]
        return self._edit_outputs(sel, self.explorer.edit(sel, changes))

    def on_reset(self, sel: Selection | None) -> dict[Any, Any]:
        """Every λ back to 1: the reconstruction."""
        out: dict[Any, Any] = {sl: 1.0 for sl in self.slot_lambdas}
        if sel is not None:
            out.update(self._edit_outputs(sel, self.explorer.edit(sel, {})))
        return out

    def on_concept_page(self, concept: int | None, sel: Selection | None) -> dict[Any, Any]:
        """Fill the concept page of `concept` (sweeping the selected image too, when there is one)."""
        if concept is None:
            return {}
        page = self.explorer.concept_page(int(concept), samples=self.samples, sweeps=self.sweeps,
                                          lambdas=self.lambdas, selection=sel)
        names = self.explorer.class_names
        lines = ["| class c | global relevance r(j, c) |", "|---|---:|"]
        lines += [f"| {names[c]} | {r:+.3f} |" for c, r in page.classes]
        md = (f"### Concept {page.concept}\n\nClasses it is most relevant for (mean local relevance over the "
              f"training images of each class):\n\n" + "\n".join(lines))
        return {self.page_concept: int(concept), self.page_classes: md, self.page_samples: page.samples_figure,
                self.page_sweeps: page.sweep_figure, self.status: f"Concept page of concept {page.concept}"}

    def on_open_page(self, sel: Selection | None, concept: int | None) -> dict[Any, Any]:
        """A slot's "page" button: open its concept's page."""
        out = self.on_concept_page(concept, sel)
        out[self.tabs] = self.gr.Tabs(selected="concept")
        return out

    # -- guarding -----------------------------------------------------------------------------------
    def _guarded(self, handler: Callable[..., dict[Any, Any]],
                 clear: Sequence[Any] = ()) -> Callable[..., dict[Any, Any]]:
        """Run a handler; its user errors (ValueError, incl. UploadError) and unexpected failures
        become a message in the page (and the components in `clear` are emptied, e.g. the refused
        upload). Nothing is shared between requests but the read-only model and its caches, so one
        failing request leaves the others untouched."""

        @functools.wraps(handler)
        def run(*args: Any) -> dict[Any, Any]:
            try:
                return handler(*args)
            except ValueError as exc:
                out: dict[Any, Any] = {self.status: f"⚠ **Error:** {exc}"}
            except Exception as exc:  # a bug or a resource problem: report it, keep serving
                traceback.print_exc(file=sys.stderr)
                out = {self.status: f"⚠ **Error:** internal error ({type(exc).__name__}: {exc}); "
                                    "the app goes on, details are in the terminal"}
            out.update({component: None for component in clear})
            return out

        return run

    # -- layout -------------------------------------------------------------------------------------
    def build(self) -> Any:
        """Create the page (gr.Blocks) and wire its events; returns it (also kept as `self.blocks`)."""
        gr = self.gr
        ex = self.explorer
        img = dict(type="numpy", format="png", interactive=False, elem_classes=["viscoin-pixels"],
                   buttons=["download", "fullscreen"])
        # Every shown image is a file in Gradio's cache: delete those older than an hour, every 10 minutes.
        with gr.Blocks(analytics_enabled=False, title="VisCoIN concept explorer", delete_cache=(600, 3600)) as blocks:
            self.state = gr.State(None)
            gr.Markdown("## VisCoIN concept explorer\n" + (f"{self.title}. " if self.title else "")
                        + f"{ex.num_concepts} concepts, {len(ex.class_names)} classes, "
                        f"{ex.resolution}×{ex.resolution} images. Scale a concept's activation by λ "
                        "(0 removes it, 1 keeps it) and watch the generated image change.")
            self.status = gr.Markdown("Pick a test image in the gallery or upload an image.", elem_id="explore-status")
            with gr.Tabs() as self.tabs:
                with gr.Tab("Image", id="image"):
                    self._image_tab(gr, img)
                with gr.Tab("Concept page", id="concept"):
                    self._concept_tab(gr, img)
            self._wire(gr, blocks)
        self.blocks = blocks
        return blocks

    def _image_tab(self, gr: Any, img: dict[str, Any]) -> None:
        ex = self.explorer
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                self.gallery = gr.Gallery(
                    value=[(self._rgb(x, 96), cap) for x, cap in ex.gallery()],
                    label=f"test images ({len(ex.gallery_indices)}): click one", columns=3, height=380,
                    format="png", allow_preview=False, interactive=False, elem_id="explore-gallery")
                self.upload = gr.File(label=f"or upload an image (≤ {ex.max_upload_bytes / 2**20:.3g} MB)",
                                      type="filepath", file_count="single", elem_id="explore-upload")
                with gr.Row():
                    self.g_label = gr.Label(label=f"g: {self.explorer.model.family}'s prediction", num_top_classes=3,
                                            elem_id="explore-g")
                    self.f_label = gr.Label(label="f: the classifier's prediction", num_top_classes=3,
                                            elem_id="explore-f")
            with gr.Column(scale=2):
                with gr.Row():
                    self.input_image = gr.Image(label="input x", elem_id="explore-input", **img)
                    self.reconstruction = gr.Image(label="reconstruction x̃ (every λ = 1)",
                                                   elem_id="explore-reconstruction", **img)
                    self.edited = gr.Image(label=f"edited: {self.explorer.model.decoder_name} with Φ_λ",
                                           elem_id="explore-edited", **img)
                with gr.Row():
                    self.added = gr.Image(label="Δ added (edited − x̃)", elem_id="explore-added", **img)
                    self.removed = gr.Image(label="Δ removed (x̃ − edited)", elem_id="explore-removed", **img)
                self.slot_concepts, self.slot_lambdas, self.slot_pages = [], [], []
                for s in range(self.slots):
                    with gr.Row(equal_height=True):
                        self.slot_concepts.append(gr.Dropdown(
                            choices=self._concept_choices(None), value=s, label=f"concept slot {s + 1}",
                            scale=2, elem_id=f"explore-slot-{s}-concept"))
                        self.slot_lambdas.append(gr.Slider(
                            0.0, LAMBDA_MAX, value=1.0, step=0.05, label="λ", scale=3,
                            elem_id=f"explore-slot-{s}-lambda"))
                        self.slot_pages.append(gr.Button("concept page", size="sm", scale=0, min_width=120,
                                                         elem_id=f"explore-slot-{s}-page"))
                self.reset = gr.Button("Reset (every λ = 1)", elem_id="explore-reset")
                self.concepts_md = gr.Markdown(elem_id="explore-concepts")

    def _concept_tab(self, gr: Any, img: dict[str, Any]) -> None:
        self.page_concept = gr.Dropdown(choices=self._concept_choices(None), value=None, label="concept",
                                        elem_id="explore-page-concept")
        self.page_classes = gr.Markdown(elem_id="explore-page-classes")
        page_img = {**img, "elem_classes": [], "show_label": False}     # the figures carry their own titles
        self.page_samples = gr.Image(label="most activating training samples", elem_id="explore-page-samples",
                                     **page_img)
        self.page_sweeps = gr.Image(label="λ sweeps and difference images", elem_id="explore-page-sweeps",
                                    **page_img)

    def _wire(self, gr: Any, blocks: Any) -> None:
        shown = [self.state, self.input_image, self.reconstruction, self.edited, self.added, self.removed,
                 self.g_label, self.f_label, self.concepts_md, self.status, *self.slot_concepts, *self.slot_lambdas]
        edit_out = [self.edited, self.added, self.removed, self.status]
        page_out = [self.page_concept, self.page_classes, self.page_samples, self.page_sweeps, self.status]
        # Selecting and editing share one queue, run in order: a result never lands after a newer one.
        # A slider's input event fires while it is dragged; only the latest pending one is run.
        ordered = dict(concurrency_id="image", concurrency_limit=1)
        select = dict(show_progress="minimal", **ordered)
        edit = dict(show_progress="hidden", trigger_mode="always_last", **ordered)
        on_gallery, on_upload = self._guarded(self.on_gallery), self._guarded(self.on_upload, clear=[self.upload])

        def gallery_select(evt: Any) -> dict[Any, Any]:
            return on_gallery(int(evt.index))

        gallery_select.__annotations__["evt"] = gr.SelectData    # how Gradio knows to pass the click

        if self.explorer.gallery_indices:
            blocks.load(lambda: on_gallery(0), None, shown, **select)
        self.gallery.select(gallery_select, None, shown, **select)
        self.upload.upload(on_upload, self.upload, [*shown, self.upload], **select)
        slot_inputs = [self.state, *self.slot_concepts, *self.slot_lambdas]
        for control in (*self.slot_lambdas, *self.slot_concepts):
            control.input(self._guarded(self.on_edit), slot_inputs, edit_out, **edit)
        self.reset.click(self._guarded(self.on_reset), self.state, [*self.slot_lambdas, *edit_out], **edit)
        self.page_concept.input(self._guarded(self.on_concept_page), [self.page_concept, self.state], page_out)
        for dd, button in zip(self.slot_concepts, self.slot_pages):
            button.click(self._guarded(self.on_open_page), [self.state, dd], [*page_out, self.tabs])

    # -- serving ------------------------------------------------------------------------------------
    def launch(self, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
               open_browser: bool = False) -> str:
        """Serve the app (building it first if needed); returns the local URL. With `block`, serve
        until Ctrl-C; otherwise return at once (close with `self.blocks.close()`)."""
        gr = self.gr
        blocks = self.blocks if self.blocks is not None else self.build()
        theme = gr.themes.Default(font=["DejaVu Sans", "Liberation Sans", "Arial", "sans-serif"],
                                  font_mono=["DejaVu Sans Mono", "Liberation Mono", "monospace"])
        blocks.queue(default_concurrency_limit=2)
        try:
            _, url, _ = blocks.launch(
                server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                inbrowser=open_browser, show_error=True, theme=theme, css=CSS, ssr_mode=False, pwa=False,
                mcp_server=False, footer_links=[], max_file_size=self.explorer.max_upload_bytes,
                enable_monitoring=False,
            )
        except OSError as exc:   # port taken, address not on this machine, ...
            where = f"--host {host} --port {port}" if port is not None else f"--host {host}"
            raise ValueError(f"{where}: cannot serve there ({exc}); choose another --port") from exc
        if block:
            print(f"VisCoIN concept explorer on {url} (Ctrl-C to stop)", flush=True)
            try:
                blocks.block_thread()
            finally:
                blocks.close()
        return url
