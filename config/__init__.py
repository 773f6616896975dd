"""li_httpd.config: the configuration pipeline and the pure routing core.

TOML text -> desugar (easy form) -> typed canonical model -> validation -> explain, and
the compiled router that the model feeds. Everything here is pure Python over data:
no sockets, no processes, no trio; only validation rules about files (static roots, TLS
certificates, the generated leak-censor file and its sources) read the filesystem.
Outside the standard library it uses cryptography only (certificate checks). Imported by
every other li_httpd package; imports none of them.

May import: nothing else.
"""

from .censorgen import GeneratedCensor, effective_deny_paths
from .loader import DEFAULT_PATH, EMBEDDED_NAME, ENV_VAR, LoadedConfig, explain, load, load_text
from .model import Config, Route
from .paths import PathError, normalize_path
from .problems import ConfigError, Problem
from .router import Found, NotFound, Router
from .version import VERSION

__all__ = [
    "DEFAULT_PATH",
    "EMBEDDED_NAME",
    "ENV_VAR",
    "VERSION",
    "Config",
    "ConfigError",
    "Found",
    "GeneratedCensor",
    "LoadedConfig",
    "NotFound",
    "PathError",
    "Problem",
    "Route",
    "Router",
    "effective_deny_paths",
    "explain",
    "load",
    "load_text",
    "normalize_path",
]
