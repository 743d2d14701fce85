"""The knob editor: change the LoRA and training knobs of a config or a run, then save and/or launch.

Opened on a sample config (home screen ``n``), on any run (``e`` on the home screen or in a
run's monitor: "rerun with changes") or from the command line (``loratop edit``). Each field
is checked as it is typed, with the same schema as ``loratop check``: a problem shows beside
its field in red and the config cannot be saved or launched until it is fixed. The knob
advisor's warnings show beside their fields in yellow; they never block anything.

The model (which knobs, how text becomes values, what they add up to) is ``tui.models.knob_form``;
this module only draws it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from loratop.core.run_dir import CONFIG, read_status, trainer_alive
from loratop.preflight.advisor import Advice, Facts, advise
from loratop.preflight.config import (
    ALL_PROJECTIONS,
    ConfigError,
    RunConfig,
    check_outside,
    read_yaml,
    validate_tree,
)
from loratop.preflight.estimate import NO_GPU, Estimate, ModelShape, adapter_param_count, estimate, fit_label, fmt_size
from loratop.preflight.next_run import NextRun
from loratop.tui.models import knob_form as form
from loratop.tui.models.knob_form import KNOBS, PRESETS, SECTIONS, TARGETS, Knob
from loratop.tui.screens.loratop_screen import LoratopScreen
from loratop.widgets import KeyFooter


def _widget_id(path: str) -> str:
    return "knob-" + path.replace(".", "-")


def _note_id(path: str) -> str:
    return "note-" + path.replace(".", "-")


class KnobEditor(LoratopScreen[None]):
    """A form of the knobs that matter, checked live, with their effective values."""

    BINDINGS = [
        Binding("escape", "back", "back", tooltip="back without saving or launching (opened by loratop edit: leave)"),
        Binding("ctrl+r", "launch", "launch", tooltip="launch the form's config as a new run"),
        Binding("ctrl+s", "save", "save as", tooltip="save the form as a new YAML file"),
        Binding("ctrl+b", "save_and_launch", "save+launch", tooltip="save the form as a new YAML file, then launch it"),
        Binding(
            "ctrl+f",
            "fit",
            "fit",
            tooltip="on the GPU: measure the batch that fits and runs fastest (loratop fit); fill the batch knobs",
        ),
    ]

    def __init__(
        self,
        tree: dict[str, Any],
        *,
        origin: str,
        parent: str | None,
        base_name: str,
        runs_root: Path,
        source_path: Path | None = None,
        source_text: str | None = None,
        proposed: NextRun | None = None,
    ) -> None:
        """Edit ``tree`` (a config as read from YAML).

        Args:
            tree: The starting config; knobs not on the form are carried over as they are.
            origin: Where it came from, for the title ("sample tiny-cpu-demo", "run r8-…").
            parent: Recorded as the new run's ``parent`` (a run folder or a config file).
            base_name: The new run's folder name starts with this (its time stamp is added).
            runs_root: Where new runs are created.
            source_path: The YAML it came from, recorded as the run's config source.
            source_text: That YAML's text as read, when saving should keep its comments and
                layout (a config file); ``None`` (a run's resolved config): save it whole.
            proposed: A finished run's next-run proposals (``loratop next``): applied to the form
                unsaved (knobs the form does not show, to the config it carries), and listed
                with their evidence above it.
        """
        super().__init__()
        tree = dict(tree)
        tree.pop("output_dir", None)  # every launch gets a fresh folder under runs_root
        tree.pop("parent", None)
        changes = proposed.changes if proposed is not None else {}
        tree = form.with_values(tree, {k: v for k, v in changes.items() if k not in KNOBS})
        self.base_tree = tree
        self.start_tree = form.with_values(tree, {k: v for k, v in changes.items() if k in KNOBS})
        """What the fields start from: :attr:`base_tree`, or with the proposals applied (unsaved changes)."""
        self.proposed = proposed
        self.origin = origin
        self.parent_ref = parent
        self.base_name = base_name
        self.runs_root = runs_root
        self.source_path = source_path
        self.source_text = source_text
        self.parent_still_training = False
        """The run this edit started from is still training (a launch would run alongside it)."""
        self.saved_path: Path | None = None
        self.config: RunConfig | None = None
        """The form's config when every field is valid, else ``None``."""
        self.errors: dict[str, str] = {}
        """Problems by dotted field path (``lora.r``); the form cannot be launched while any exist."""
        self.advice: list[Advice] = []
        self.dataset_rows: int | None = None
        self._facts_note = "reading the model's shape and the dataset…"
        self._shape: ModelShape | None = None
        self._estimate: Estimate | None = None
        self._gpu: tuple[int | None, str] = (None, "")
        self._extra_targets = [t for t in form.get_path(tree, TARGETS) if t not in ALL_PROJECTIONS]

    # -- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(Content.from_markup("[b]edit knobs[/b] · from $origin", origin=self.origin), id="editor-title")
        if self.proposed is not None:
            yield Static(Content("\n".join(next_run_lines(self.proposed))), id="next-run")
        with VerticalScroll(id="knob-form"):
            for title, knobs in SECTIONS:
                yield Static(f"[b]{title}[/b]", classes="form-section")
                for knob in knobs:
                    with Horizontal(classes="knob-row"):
                        yield Label(knob.label, classes="knob-label")
                        yield self._field(knob)
                        yield Static(knob.hint, id=_note_id(knob.path), classes="knob-note")
                if title.startswith("LoRA"):
                    yield from self._targets()
            yield Static(id="fit-result", markup=False)
        yield Static(id="effective")
        yield Static(id="editor-problems")
        with Horizontal(id="editor-actions"):
            yield Input(self._default_save_path(), id="save-path", compact=True)
            yield Button("Save", id="save", compact=True)
            yield Button("Launch", id="launch", variant="primary", compact=True)
            yield Button("Save+launch", id="save-launch", compact=True)
        yield KeyFooter()

    def _field(self, knob: Knob) -> Any:
        value = form.get_path(self.start_tree, knob.path)
        if knob.kind == "bool":
            return Checkbox("", bool(value), id=_widget_id(knob.path), compact=True)
        if knob.kind == "choice":
            options = [(choice, choice) for choice in knob.choices]
            if value in knob.choices:
                return Select(options, value=value, allow_blank=False, id=_widget_id(knob.path), compact=True)
            return Select(options, id=_widget_id(knob.path), compact=True)
        return Input(form.format_value(value), id=_widget_id(knob.path), compact=True, select_on_focus=False)

    def _targets(self) -> ComposeResult:
        chosen = set(form.get_path(self.base_tree, TARGETS))
        with Horizontal(classes="knob-row"):
            yield Label("target_modules", classes="knob-label")
            yield Button("attention", id="preset-attention", compact=True)
            yield Button("MLP", id="preset-mlp", compact=True)
            yield Button("all 7", id="preset-all", compact=True)
            yield Static("presets", id=_note_id(TARGETS), classes="knob-note")
        with Vertical(id="targets"):
            for name in ALL_PROJECTIONS:
                yield Checkbox(name, name in chosen or "all-linear" in chosen, id=f"target-{name}", compact=True)
        if self._extra_targets:
            yield Static(f"also kept: {', '.join(self._extra_targets)}", classes="knob-extra", markup=False)

    def _default_save_path(self) -> str:
        stem = form.base_name(self.base_name)
        candidate, n = Path(f"{stem}-edited.yaml"), 2
        while candidate.exists():
            candidate, n = Path(f"{stem}-edited-{n}.yaml"), n + 1
        return str(candidate)

    def on_mount(self) -> None:
        self.query_one("#fit-result").display = False
        self.revalidate()
        self.load_facts()
        first = SECTIONS[0][1][0]
        self.query_one(f"#{_widget_id(first.path)}").focus()  # typing changes a knob at once

    # -- facts that take I/O (a worker) ---------------------------------------------------

    @work(thread=True, exclusive=True, group="editor-facts", exit_on_error=False)
    def load_facts(self) -> None:
        """Dataset rows, the model's shape and the GPU: for the effective values and the advice."""
        from loratop.preflight.data_files import usable_rows
        from loratop.preflight.estimate import EstimateError, load_model_shape, visible_gpu_total

        max_rows = form.get_path(self.base_tree, "data.max_rows")
        split = form.get_path(self.base_tree, "data.eval_split")
        rows = usable_rows(
            str(form.get_path(self.base_tree, "data.path")),
            str(form.get_path(self.base_tree, "data.format")),
            max_rows if isinstance(max_rows, int) else None,
            float(split) if isinstance(split, (int, float)) and not isinstance(split, bool) and split > 0 else None,
        )
        note = ""
        try:
            shape = load_model_shape(str(form.get_path(self.base_tree, "model.name_or_path")))
        except EstimateError as exc:
            shape, note = None, f"n/a ({exc})"
        gpu = visible_gpu_total()
        self.app.call_from_thread(self._facts_loaded, rows, shape, note, gpu)

    def _facts_loaded(self, rows: int | None, shape: ModelShape | None, note: str, gpu: tuple[int | None, str]) -> None:
        self.dataset_rows, self._shape, self._facts_note, self._gpu = rows, shape, note, gpu
        self.revalidate()

    # -- live validation ----------------------------------------------------------------------

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _changed(self, event: Any) -> None:
        if getattr(event, "input", None) is not None and event.input.id == "save-path":
            return
        self.revalidate()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        """Enter moves to the next field, as in a form; in the file name it saves."""
        if event.input.id == "save-path":
            self.action_save()
        else:
            self.focus_next()

    def read_form(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The typed values by path, and a problem for each field that could not be read."""
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for path, knob in KNOBS.items():
            widget = self.query_one(f"#{_widget_id(path)}")
            if isinstance(widget, Checkbox):
                values[path] = widget.value
            elif isinstance(widget, Select):
                if widget.value == Select.NULL:
                    errors[path] = f"{path}: pick one of {', '.join(knob.choices)}"
                else:
                    values[path] = widget.value
            else:
                value, problem = form.parse_text(knob, self.query_one(f"#{_widget_id(path)}", Input).value)
                if problem:
                    errors[path] = problem
                else:
                    values[path] = value
        targets = [n for n in ALL_PROJECTIONS if self.query_one(f"#target-{n}", Checkbox).value]
        targets += [t for t in self._extra_targets if t != "all-linear"]
        if targets:
            values[TARGETS] = targets
        else:
            errors[TARGETS] = f"{TARGETS}: pick at least one module to adapt"
        return values, errors

    def revalidate(self) -> None:
        """Check every field, show each problem or piece of advice at its field, update the totals."""
        values, errors = self.read_form()
        config, problems = validate_tree(form.with_values(self.base_tree, values))
        for path, text in problems.items():
            errors.setdefault(path, text)
        self.errors = errors
        self.config = config if not errors else None
        self._estimate = self._estimate_for(self.config)
        self.advice = advise(self.config, self._facts()) if self.config is not None else []
        advice_at: dict[str, list[str]] = {}
        for item in self.advice:
            advice_at.setdefault(item.field, []).append(item.message)
        for path in [*KNOBS, TARGETS]:
            note = self.query_one(f"#{_note_id(path)}", Static)
            if path in errors:
                note.update(Content.from_markup("[b]✗[/b] $error", error=errors[path]))
                note.set_classes("knob-note error")
            elif path in advice_at:
                note.update(Content("⚠ " + " ".join(advice_at[path])))
                note.set_classes("knob-note advice")
            else:
                note.update(KNOBS[path].hint if path in KNOBS else "presets")
                note.set_classes("knob-note")
        # Advice on knobs that are not on the form (lora.bias, ...) and problems elsewhere in the file.
        elsewhere = [f"✗ {t}" for p, t in errors.items() if p not in KNOBS and p != TARGETS]
        elsewhere += [f"⚠ {i.field}: {i.message}" for i in self.advice if i.field not in [*KNOBS, TARGETS]]
        self._show_problems(elsewhere)
        self.query_one("#effective", Static).update(self._effective_text())
        for button in ("#launch", "#save", "#save-launch"):
            self.query_one(button, Button).disabled = self.config is None

    def _show_problems(self, lines: list[str]) -> None:
        box = self.query_one("#editor-problems", Static)
        box.update(Content("\n".join(lines)))  # they quote the config's values: data, never markup
        box.display = bool(lines)

    def _estimate_for(self, config: RunConfig | None) -> Estimate | None:
        """The pre-flight estimate of the form's config, once the model's shape is known."""
        if config is None or self._shape is None:
            return None
        return estimate(self._shape, config, self._gpu[0], self._gpu[1] or NO_GPU)

    def _facts(self) -> Facts:
        total = self._gpu[0]
        peak = self._estimate.row(self._estimate.selected).total if self._estimate and total else None
        return Facts(dataset_rows=self.dataset_rows, peak_bytes=peak, gpu_total_bytes=total)

    def _effective_text(self) -> Content:
        config = self.config
        if config is None:
            count = len(self.errors)
            return Content.from_markup(
                f"[b]{count} problem{'s' if count != 1 else ''}[/b] marked ✗: fix them to save or launch"
            )
        # Our own styling in markup; what comes from the config or the model's files is plain Content.
        lines = [Content(f"{form.scale_text(config)} · {form.batch_text(config, self.dataset_rows)}")]
        est = self._estimate
        if est is None:
            lines.append(Content(f"trainable params, pre-flight estimate: {self._facts_note}"))
        else:
            trainable = adapter_param_count(est.shape, config.lora.target_modules, config.lora.r)
            total = est.params.total + trainable
            lines.append(
                Content(
                    f"trainable {trainable:,} adapter params ({trainable / total:.2%} of {total:,}), "
                    f"{len(config.lora.target_modules)} modules × {est.shape.num_hidden_layers} layers"
                )
            )
            row = est.row(est.selected)
            fit = fit_label(row, est.gpu_name)
            fit = f"n/a ({fit})" if row.fits is None else fit
            method = row.name.split(",")[0]
            lines.append(Content(f"pre-flight estimate: {method} peak {fmt_size(row.total)} · {fit}"))
        if self.parent_still_training:
            lines.append(
                Content.from_markup(
                    "[yellow]⚠ $origin is still training: a launch runs alongside it, sharing its CPU/GPU[/yellow]",
                    origin=self.origin,
                )
            )
        warnings = len(self.advice)
        lines.append(
            Content.from_markup(f"[yellow]{warnings} warning{'s' if warnings != 1 else ''} (⚠, advice only)[/yellow]")
            if warnings
            else Content("no advice")
        )
        return Content("\n").join(lines)

    # -- actions --------------------------------------------------------------------------------

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        button = event.button.id or ""
        if button.startswith("preset-"):
            self.apply_preset(button.removeprefix("preset-"))
        elif button == "save":
            self.action_save()
        elif button == "launch":
            self.action_launch()
        elif button == "save-launch":
            self.action_save_and_launch()

    def apply_preset(self, name: str) -> None:
        """Check exactly the preset's projections: ``attention``, ``mlp`` or ``all``."""
        chosen = PRESETS[name]
        for module in ALL_PROJECTIONS:
            self.query_one(f"#target-{module}", Checkbox).value = module in chosen

    def _ready(self) -> RunConfig | None:
        self.revalidate()
        if self.config is None:
            self.notify("fix the fields marked ✗ first", severity="error")
            return None
        return self.config

    def action_save(self) -> Path | None:
        """Write the form as a new YAML (never over an existing file)."""
        config = self._ready()
        if config is None:
            return None
        text = self.query_one("#save-path", Input).value.strip()
        if not text:
            self.notify("type a file name to save to", severity="error")
            return None
        path = Path(text).expanduser()
        if path.exists():
            self.notify(
                f"{path} already exists; choose a new name (nothing was overwritten)", severity="error", markup=False
            )
            return None
        to_save = config.model_copy(deep=True)
        to_save.output_dir, to_save.parent = None, self.parent_ref
        changes = form.changed_values(self.base_tree, self.read_form()[0])
        text, layout_lost = form.saved_yaml(to_save, self.origin, self.source_text, changes)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            self.notify(f"cannot save {path}: {exc.strerror or exc}", severity="error", markup=False)
            return None
        self.saved_path = path
        kept = f" (written whole: the origin's layout could not be kept: {layout_lost})" if layout_lost else ""
        self.notify(f"saved {path}{kept} · run it with: loratop run {path}", markup=False)
        return path

    def action_launch(self) -> None:
        """Launch the form's config as a new run under the runs folder, recording its parent."""
        config = self._ready()
        if config is None:
            return
        run = config.model_copy(deep=True)
        run.output_dir = str(form.new_run_dir(self.runs_root, self.base_name))
        run.parent = self.parent_ref
        problems = check_outside(run, source="editor")
        if problems:
            self._show_problems([f"✗ {p}" for p in problems])
            self.notify("\n".join(problems), title="cannot launch", severity="error", timeout=10, markup=False)
            return
        self.loratop.launch_config(run, self.saved_path or self.source_path, replace=self)

    def action_save_and_launch(self) -> None:
        if self.action_save() is not None:
            self.action_launch()

    def action_fit(self) -> None:
        """Run ``loratop fit``'s probe on the form's config (a worker); fill the batch knobs from it."""
        config = self._ready()
        if config is not None:
            self._show_fit("loratop fit: starting the probe…")
            self.fit_probe(config)

    @work(thread=True, exclusive=True, group="editor-fit", exit_on_error=False)
    def fit_probe(self, config: RunConfig) -> None:
        """The same probe as ``loratop fit``, in a subprocess; without a GPU, the estimate's view instead."""
        import tempfile

        from loratop.preflight.config import dump_config
        from loratop.preflight.estimate import format_estimate
        from loratop.preflight.fit_plan import format_result
        from loratop.preflight.fit_runner import FitProbeProcess, no_gpu_line

        refusal = no_gpu_line("CONFIG")
        if refusal is not None:
            view = format_estimate(self._estimate) if self._estimate is not None else self._facts_note
            self.app.call_from_thread(self._show_fit, f"{refusal}\n\n{view}")
            return
        with tempfile.TemporaryDirectory(prefix="loratop-fit-") as folder:
            path = Path(folder) / "form.yaml"
            path.write_text(dump_config(config))
            probe = self._probe = FitProbeProcess(path)
            for message in probe.messages():
                if message.get("kind") == "progress":
                    self.app.call_from_thread(self._show_fit, f"loratop fit: {message.get('message', '')}")
            outcome = probe.finish()
        if outcome.result is None:
            self.app.call_from_thread(self._show_fit, f"loratop fit: {outcome.refused or outcome.failed}")
            return
        self.app.call_from_thread(self._fit_done, outcome.result, format_result(outcome.result))

    def _show_fit(self, text: str) -> None:
        panel = self.query_one("#fit-result", Static)
        panel.update(text)
        panel.display = True
        panel.scroll_visible()

    def _fit_done(self, result: Any, table: str) -> None:
        """Fill the batch knobs from the recommendation (unsaved: the user saves), show the table."""
        from loratop.preflight.fit_plan import recommended_changes

        for path, value in recommended_changes(result).items():
            widget = self.query_one(f"#{_widget_id(path)}")
            if isinstance(widget, Checkbox):
                widget.value = bool(value)
            elif isinstance(widget, Input):
                widget.value = form.format_value(value)
        filled = "batch knobs filled from the recommendation (not saved)" if result.recommended else "nothing filled"
        self._show_fit(f"{table}\n{filled}")

    def on_unmount(self) -> None:
        probe = getattr(self, "_probe", None)
        if probe is not None:
            probe.stop()  # ours: the probe this editor started

    def action_back(self) -> None:
        """Back to the screen it was opened from; opened first (``loratop edit``), leave the dashboard."""
        if self.has_screen_below:
            self.dismiss(None)
        else:
            self.app.exit()


def editor_for_config(path: Path, runs_root: Path) -> KnobEditor:
    """The editor on a YAML config (a sample or the user's own).

    Raises:
        ConfigError: the file is missing or not YAML.
    """
    tree = read_yaml(path)  # bounded and checked: the editor's values
    try:
        text: str | None = path.read_text()  # the layout a save keeps
    except (OSError, UnicodeDecodeError):  # gone since: a save writes the config whole
        text = None
    return KnobEditor(
        tree,
        origin=f"config {path.name}",
        parent=str(path.resolve()),
        base_name=path.stem,
        runs_root=runs_root,
        source_path=path,
        source_text=text,
    )


def next_run_lines(plan: NextRun) -> list[str]:
    """The editor's list of a next run's proposals: a line each, with its evidence, then the notes."""
    count = len(plan.proposals)
    lines = [f"next run: {count} change{'s' if count != 1 else ''} from this run's record, applied unsaved"]
    lines += [f"{p.rank}. {p.headline()} · evidence: {p.evidence}" for p in plan.proposals]
    return lines + [f"note: {note}" for note in plan.notes]


def editor_for_run(run_dir: Path, runs_root: Path, proposed: NextRun | None = None) -> KnobEditor:
    """The editor on a run's recorded config: "rerun with changes" (with ``proposed``: its next
    run's proposals applied, unsaved).

    Raises:
        ConfigError: the run has no readable ``config.yaml``.
    """
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError([f"{run_dir}: no {CONFIG} in this run folder, so there is nothing to edit"])
    editor = KnobEditor(
        read_yaml(path),
        origin=f"run {run_dir.name}",
        parent=str(run_dir.resolve()),
        base_name=run_dir.name,
        runs_root=runs_root,
        source_path=None,
        proposed=proposed,
    )
    status = read_status(run_dir) or {}
    editor.parent_still_training = status.get("status") is None and trainer_alive(status)
    return editor
