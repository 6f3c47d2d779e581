"""Loading an exported model without this package: code generated at export for SpeechBrain's ``foreign_class``.

A model published on the Hub is loaded by people who have SpeechBrain and
transformers but not ``lap_speechbrain``. SpeechBrain's mechanism for custom
code in a model repository is
``speechbrain.inference.interfaces.foreign_class``: it fetches one Python file
from the repository, imports it and builds the named class from a yaml of the
repository. :func:`standalone_files` writes both into the exported folder:

- ``custom_interface.py``: the source of the package's modules that the model
  needs (those the yaml names and :class:`LAPSpeakerRecognition`'s, with
  their imports of this package, followed module by module), copied from the
  installed package as they are, under a private package name that includes a
  hash of that code, and a :class:`SourceFinder` that imports them from there.
  Nothing is kept in the repository twice: the file is made from the package
  at every export.
- ``hyperparams_standalone.yaml``: the exported ``hyperparams.yaml`` with
  every ``lap_speechbrain.`` object renamed to the private package's.

The private name differs when the code differs, so two models exported by
different versions load side by side in one process.

Authors
 * lap-speechbrain contributors 2026
"""

import ast
import functools
import hashlib
import importlib
import importlib.abc
import importlib.util
import inspect
import json
import re
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

PACKAGE = "lap_speechbrain"
MODULE_FILE = "custom_interface.py"
HPARAMS_FILE = "hyperparams_standalone.yaml"
INTERFACE = "LAPSpeakerRecognition"
INTERFACE_MODULE = "lap_speechbrain.inference.interfaces"
GENERATED_FILES = (MODULE_FILE, HPARAMS_FILE)
# The objects a yaml constructs or names: `!new:a.b.C`, `!name:a.b.f`, `!apply:a.b.f`.
YAML_OBJECT = re.compile(r"(!(?:new|name|apply):)(lap_speechbrain(?:\.\w+)+)")
IMPORT_LINE = re.compile(r"^(\s*(?:from|import)\s+)lap_speechbrain\b")


class SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Imports the modules of one package from source texts held in memory.

    Copied into the generated ``custom_interface.py`` (a hub repository
    delivers one Python file to ``foreign_class``, not a package), where it is
    put on ``sys.meta_path`` to import the package's modules from that file.

    Arguments
    ---------
    package : str
        The package's name.
    sources : mapping
        Module name -> source text, for the package and its modules.
    packages : iterable of str
        The names in ``sources`` that are packages.

    Example
    -------
    >>> import sys
    >>> finder = SourceFinder("_demo_pkg", {"_demo_pkg": "", "_demo_pkg.m": "x = 1"}, ["_demo_pkg"])
    >>> sys.meta_path.append(finder)
    >>> importlib.import_module("_demo_pkg.m").x
    1
    >>> sys.meta_path.remove(finder)
    """

    def __init__(self, package: str, sources: Mapping[str, str], packages: Iterable[str]):
        self.package = package
        self.sources = dict(sources)
        self.packages = set(packages)

    def find_spec(self, fullname, path=None, target=None):
        """The spec of a module of the package; None for any other name."""
        if fullname not in self.sources:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname in self.packages)

    def is_package(self, fullname: str) -> bool:
        """Whether ``fullname`` is one of the packages."""
        return fullname in self.packages

    def get_source(self, fullname: str) -> str:
        """The module's source text (also shown in tracebacks)."""
        return self.sources[fullname]

    def get_code(self, fullname: str):
        """The compiled module, named after its file in the package."""
        filename = fullname.replace(".", "/") + ("/__init__.py" if fullname in self.packages else ".py")
        return compile(self.sources[fullname], filename, "exec")


def standalone_files(hyperparams: str, version: str) -> Dict[str, str]:
    """The generated files that let ``foreign_class`` load an export without this package.

    Arguments
    ---------
    hyperparams : str
        The exported ``hyperparams.yaml``.
    version : str
        The package version, named in the generated files.

    Returns
    -------
    dict
        File name -> text: ``custom_interface.py`` and ``hyperparams_standalone.yaml``.

    Example
    -------
    >>> files = standalone_files("m: !new:lap_speechbrain.inference.modules.PassThrough\\n", "0")
    >>> sorted(files)
    ['custom_interface.py', 'hyperparams_standalone.yaml']
    >>> "lap_speechbrain.inference" in files["hyperparams_standalone.yaml"]
    False
    """
    objects = {match.group(2): _defining_module(match.group(2)) for match in YAML_OBJECT.finditer(hyperparams)}
    private, texts, packages = _private_package(tuple(sorted({INTERFACE_MODULE, *objects.values()})))

    def renamed(match: "re.Match[str]") -> str:
        attribute = match.group(2).rsplit(".", 1)[1]
        return f"{match.group(1)}{_rename(objects[match.group(2)], private)}.{attribute}"

    return {
        MODULE_FILE: _module_text(private, texts, packages, version),
        HPARAMS_FILE: (
            f"# Generated from hyperparams.yaml by lap-speechbrain {version} at export: the same model, built by\n"
            f"# the code in {MODULE_FILE}, for loading without the lap_speechbrain package:\n"
            f"#   {foreign_class_call('<source>')}\n\n" + YAML_OBJECT.sub(renamed, hyperparams)
        ),
    }


@functools.lru_cache(maxsize=None)
def _private_package(roots: Tuple[str, ...]) -> Tuple[str, Dict[str, str], List[str]]:
    """The private package of the code ``roots`` need: its name, module name -> source, package names.

    Cached: parsing the sources costs seconds, and the package's code does not
    change while it runs.
    """
    sources = module_sources(roots)
    private = "_lap_speechbrain_" + hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:12]
    parents = {".".join(name.split(".")[:depth]) for name in sources for depth in range(1, name.count(".") + 1)}
    packages = sorted(parents | {name for name in sources if _is_package(name)})
    texts = {_rename(name, private): _rewrite_imports(sources.get(name, ""), name, private)
             for name in sorted(set(sources) | set(packages))}
    return private, texts, [_rename(name, private) for name in packages]


def foreign_class_call(source: str) -> str:
    """The one line that loads an exported model from ``source`` without this package.

    Example
    -------
    >>> foreign_class_call("me/lap")  # doctest: +ELLIPSIS
    'foreign_class("me/lap", pymodule_file="custom_interface.py", classname="LAPSpeakerRecognition", ...)'
    """
    return (f'foreign_class("{source}", pymodule_file="{MODULE_FILE}", classname="{INTERFACE}", '
            f'hparams_file="{HPARAMS_FILE}")')


def module_sources(roots: Sequence[str]) -> Dict[str, str]:
    """Source texts of the package's modules ``roots`` and of the package's modules they import.

    Package ``__init__`` files are included only when a module imports from
    the package itself; otherwise the package is made empty, so only the
    modules the model needs are copied.

    Arguments
    ---------
    roots : sequence of str
        Module names of this package.

    Returns
    -------
    dict
        Module name -> source text.

    Example
    -------
    >>> sorted(module_sources(["lap_speechbrain.lobes.backend"]))  # doctest: +NORMALIZE_WHITESPACE
    ['lap_speechbrain.lobes.backend', 'lap_speechbrain.lobes.lap', 'lap_speechbrain.lobes.layer_sum',
     'lap_speechbrain.lobes.networks', 'lap_speechbrain.lobes.pooling', 'lap_speechbrain.nnet.sync_batchnorm']
    """
    sources: Dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in sources:
            continue
        sources[name] = _source(name)
        todo += _package_imports(sources[name])
    return sources


def _source(name: str) -> str:
    """The source text of a module of this package (read from the installed file, as ``inspect`` does)."""
    try:
        return inspect.getsource(importlib.import_module(name))
    except OSError:  # inspect's answer for an empty file, e.g. a bare __init__.py
        return ""


def _package_imports(source: str) -> List[str]:
    """The modules of this package that ``source`` imports (at any depth of the code)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and _in_package(node.module or ""):
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names
                      if _is_module(f"{node.module}.{alias.name}")]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _in_package(alias.name)]
    return found


def _rewrite_imports(source: str, name: str, private: str) -> str:
    """``source`` with its imports of this package renamed to ``private``."""
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            lines[node.lineno - 1] = IMPORT_LINE.sub(rf"\g<1>{private}", lines[node.lineno - 1])
    text = "".join(lines)
    left = _package_imports(text)
    if left:
        raise ValueError(f"{name}: cannot rename its imports of {left} (one import per statement expected)")
    return text


def _module_text(private: str, texts: Mapping[str, str], packages: Sequence[str], version: str) -> str:
    """The generated ``custom_interface.py``."""
    entries = "".join(f"    {name!r}: {_literal(text)},\n" for name, text in texts.items())
    return f'''"""Code of lap-speechbrain {version} that this model needs, generated at export: do not edit.

Loads the model without the lap_speechbrain package (``pip install speechbrain transformers``)::

    from speechbrain.inference.interfaces import foreign_class
    model = {foreign_class_call("<hub id or folder>")}

The package's modules are kept below, unchanged but for their imports, as the private package
``{private}``, which SourceFinder imports from this file.
"""

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Iterable, Mapping


{inspect.getsource(SourceFinder)}

PACKAGE = {private!r}
PACKAGES = {list(packages)!r}
SOURCES = {{
{entries}}}

if not any(getattr(finder, "package", None) == PACKAGE for finder in sys.meta_path):
    sys.meta_path.append(SourceFinder(PACKAGE, SOURCES, PACKAGES))
{INTERFACE} = importlib.import_module({_rename(INTERFACE_MODULE, private)!r}).{INTERFACE}
'''


def _literal(text: str) -> str:
    """A Python literal of ``text``: a readable raw triple-quoted string where that is exact."""
    if "'''" not in text and not text.endswith(("\\", "'")):
        return f"r'''{text}'''"
    return repr(text)


def _rename(name: str, private: str) -> str:
    """A module name of this package under the private package name."""
    return private + name[len(PACKAGE):]


def _in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _is_package(name: str) -> bool:
    return hasattr(importlib.import_module(name), "__path__")


def _defining_module(dotted: str) -> str:
    """The module that defines the object a yaml names, e.g. ``lap_speechbrain.lobes.ssl_encoder``."""
    module, attribute = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), attribute).__module__
