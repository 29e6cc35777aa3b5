"""The small controls the explorers are pointed at: clickable tokens, a row of method options made from the
method's signature, and a set of toggles that picks several methods with plain clicks. Each is built of
stock ipywidgets and holds a `value` that `View.build` watches like any other control's."""

from __future__ import annotations

import ast
import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import traitlets
from ipyevents import Event

from ..explain import method_options
from ..explain.legend import Scale, word_positions

INLINE = {"description_width": "initial"}  # a label beside its control, as wide as it needs


def compact() -> widgets.Layout:
    """A small button's layout; one each, since a Layout is a widget that every button given it shares."""
    return widgets.Layout(width="auto", height="auto", padding="1px 6px", margin="1px")


class TokenButtons(widgets.HBox):
    """A caption's tokens as buttons, each shaded by its value on a scale and written with it (hover shows it
    unrounded); clicking one makes its index the `value`."""

    value = traitlets.Int(0)

    def __init__(self) -> None:
        super().__init__(layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        self.add_class("clipx-tokens")
        self.tokens: list[str] = []

    def show(self, tokens: Sequence[str], values: Any, scale: Scale, value: int) -> None:
        """Tokens with these values, the `value`-th one selected; buttons are reused while the tokens stay."""
        if list(tokens) != self.tokens:
            self.tokens = list(tokens)
            self.children = self._buttons(len(tokens))
        words = set(word_positions(tokens))
        colours = scale.on_white().colours(np.asarray(values, np.float32))
        for k, (button, token) in enumerate(zip(self.children, tokens)):
            v = float(values[k])
            r, g, b = colours[k].tolist()
            button.description = f"{token} {scale.format(v)}" if k in words else token
            button.tooltip = f"{token}: {v:.4g}"
            button.style.button_color = f"rgb({r},{g},{b})" if k in words else "#f4f4f4"
            button.style.text_color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 or k not in words else "white"
            chosen = self.chosen(k, value)
            button.style.font_weight = "bold" if chosen else "normal"
            button.layout.border = "2px solid #222" if chosen else "2px solid transparent"
        self.value = value

    @staticmethod
    def chosen(k: int, value: Any) -> bool:
        """Whether token k is the selection `value` (or in it)."""
        return k == value

    def _buttons(self, n: int) -> list[widgets.Button]:
        buttons = [widgets.Button(layout=compact()) for _ in range(n)]
        for k, button in enumerate(buttons):
            button.on_click(lambda _, k=k: setattr(self, "value", k))
        return buttons


class TokenSpan(TokenButtons):
    """TokenButtons whose `value` is a span of tokens (first, last), both included: pressing a token picks it,
    shift-pressing one extends the span from the last token picked to it, and dragging from one token to
    another picks those between. Plain buttons tell Python no modifier keys, so each one's presses come
    through ipyevents."""

    value = traitlets.Tuple((0, 0))

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self.anchor = 0  # the token a shift-press extends from
        self.down: int | None = None  # the token pressed, until released

    @staticmethod
    def chosen(k: int, value: Any) -> bool:
        return value[0] <= k <= value[1]

    def show(self, tokens: Sequence[str], values: Any, scale: Scale, value: tuple[int, int]) -> None:
        if list(tokens) != self.tokens:  # another caption: shift-presses extend from its own span
            self.anchor, self.down = value[0], None
        super().show(tokens, values, scale, value)

    def _buttons(self, n: int) -> list[widgets.Button]:
        for events in self.events:  # the old buttons' listeners would otherwise live on in the kernel
            events.close()
        buttons = [widgets.Button(layout=compact()) for _ in range(n)]
        # preventing the default action keeps a drag from selecting the buttons' text
        self.events = [Event(source=b, watched_events=["mousedown", "mouseup"], prevent_default_action=True)
                       for b in buttons]
        for k, events in enumerate(self.events):
            events.on_dom_event(lambda event, k=k: self.pressed(k, event))
        return buttons

    def pressed(self, k: int, event: dict) -> None:
        """A mousedown or mouseup on token k, as ipyevents sends it."""
        if event.get("type") == "mousedown":
            if not event.get("shiftKey"):
                self.anchor = k
            self.down = k
            self.value = (min(self.anchor, k), max(self.anchor, k))
        elif event.get("type") == "mouseup" and self.down is not None:
            if k != self.down:  # released on another token: a drag
                self.value = (min(self.anchor, k), max(self.anchor, k))
            self.down = None


class MethodOptions(widgets.HBox):
    """A method's options as one row of inputs made from its signature's defaults (a number box for a number, a
    check box for a flag, a text box otherwise, where None or a Python literal may be typed); `value` holds the
    options that differ from their defaults, so a view's cache keys on what was changed."""

    value = traitlets.Dict()

    def __init__(self, method: str) -> None:
        super().__init__(layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        self.add_class("clipx-options")
        self.error = widgets.HTML()
        self.show(method)

    def show(self, method: str) -> None:
        """The inputs of `method`, each at its default."""
        self.method, self.defaults = method, method_options(method)
        self.inputs = {name: _input(name, default) for name, default in self.defaults.items()}
        for box in self.inputs.values():
            box.observe(self._changed, "value")
        label = widgets.HTML(f"<small>{html.escape(method)} options:</small>" if self.inputs else
                             f"<small>{html.escape(method)} has no options</small>")
        self.children = [label, *self.inputs.values(), self.error]
        self.error.value = ""
        self.value = {}

    def _changed(self, _change: Any = None) -> None:
        given = {}
        for name, box in self.inputs.items():
            try:
                value = _parse(box.value, self.defaults[name])
            except (ValueError, SyntaxError):
                self.error.value = (f'<span style="color:#b00">{html.escape(name)}: {html.escape(repr(box.value))} '
                                    "is not None, a number or a Python literal</span>")
                return  # the view keeps what it shows
            if value != self.defaults[name]:
                given[name] = value
        self.error.value = ""
        self.value = given


def _input(name: str, default: Any) -> widgets.Widget:
    kind = {bool: widgets.Checkbox, int: widgets.IntText, float: widgets.FloatText}.get(type(default))
    if kind is widgets.Checkbox:
        return kind(value=default, description=name, indent=False, layout=widgets.Layout(width="auto"))
    width = widgets.Layout(width=f"{len(name) * 8 + 70}px")
    if kind is not None:
        return kind(value=default, description=name, style=INLINE, layout=width)
    return widgets.Text(value="" if default is None else str(default), placeholder="None", description=name,
                        continuous_update=False, style=INLINE, layout=width)


def _parse(typed: Any, default: Any) -> Any:
    """A text box's text as the option's value: empty is None, a string option's text is itself, and other
    text a Python literal (a number, a tuple, None); number boxes and check boxes give their value as it is."""
    if not isinstance(typed, str):
        return typed
    text = typed.strip()
    if isinstance(default, str):
        return text
    return None if text in ("", "None") else ast.literal_eval(text)


class Toggles(widgets.HBox):
    """Several choices picked with plain clicks (no ctrl-click), all in view: one toggle button each; `value`
    holds the pressed ones in the order given, then in the order pressed."""

    value = traitlets.Tuple()

    def __init__(self, options: Sequence[str], value: Sequence[str], description: str = "") -> None:
        super().__init__(layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        self.options = list(options)
        self.buttons = [widgets.ToggleButton(description=o, value=o in value, layout=compact()) for o in self.options]
        for button in self.buttons:
            button.observe(self._pressed, "value")
        self.children = ([widgets.Label(description)] if description else []) + self.buttons
        self.value = tuple(value)
        self._setting = False
        self.observe(self._set, "value")

    def _pressed(self, _change: Any) -> None:
        if not self._setting:
            pressed = [b.description for b in self.buttons if b.value]
            self.value = tuple([o for o in self.value if o in pressed] + [o for o in pressed if o not in self.value])

    def _set(self, change: dict) -> None:
        """The buttons follow a value set from Python, without each one's press setting a partial value."""
        self._setting = True
        try:
            for button in self.buttons:
                button.value = button.description in change["new"]
        finally:
            self._setting = False
