"""Named, pluggable parts of quantization: built-ins registered in code, others found by entry point.

A distribution adds a rounding method, a scale search or a model transform by declaring it in its
pyproject.toml, e.g.

    [project.entry-points."mobilellm_export.rounding"]
    floor = "my_package.rounding:Floor"

and a recipe can name it (`[linear] rounding = "floor"`) with no change here. Entry points are read
only when a name is not a built-in, and a plugin's module is imported only when it is first used.
"""

from __future__ import annotations

from importlib import metadata

from mobilellm_export.errors import UserError


class Registry:
    """Objects with a `name`, looked up by it. `required`: the attributes every one must have."""

    def __init__(self, group: str, kind: str, required: tuple[str, ...], builtins=()):
        self.group, self.kind, self.required = group, kind, required
        self._builtins: dict[str, object] = {}
        self._plugins: dict[str, object] = {}  # loaded entry points, once per process
        for b in builtins:
            self.register(b)

    def register(self, item):
        """A built-in (registered in code: it wins over an entry point of the same name)."""
        self._check(item, item.name, "built-in")
        self._builtins[item.name] = item
        return item

    def forget_plugins(self) -> None:
        """Drop the loaded plugins: the next lookup reads the entry points again."""
        self._plugins.clear()

    def _entry_points(self) -> dict:
        # Read afresh each time: a distribution installed (or put on sys.path) while running counts.
        return {ep.name: ep for ep in metadata.entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Built-ins and installed plugins (the plugins are listed, not imported)."""
        return sorted(set(self._builtins) | set(self._entry_points()))

    def get(self, name: str, where: str = ""):
        """The object named `name`; a UserError naming the known ones if there is none."""
        named = isinstance(name, str)  # a TOML number or table where a name belongs matches nothing
        found = self._builtins.get(name, self._plugins.get(name)) if named else None
        if found is not None:
            return found
        ep = self._entry_points().get(name) if named else None
        if ep is None:
            at = f"{where}: " if where else ""
            raise UserError(f"{at}unknown {self.kind} {name!r} (known: {', '.join(self.names())}; others come "
                            f"from installed packages declaring entry points in group {self.group})")
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin is the user's environment, not our bug: one line
            raise UserError(f"{self.kind} {name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from None
        if isinstance(obj, type):
            obj = obj()
        self._check(obj, name, ep.value)
        self._plugins[name] = obj
        return obj

    def _check(self, obj, name: str, origin: str) -> None:
        missing = [a for a in self.required if not hasattr(obj, a)]
        if missing:
            raise UserError(f"{self.kind} {name!r} ({origin}) lacks {', '.join(missing)}")
        if obj.name != name:
            raise UserError(f"{self.kind} {name!r} ({origin}) calls itself {obj.name!r}")
