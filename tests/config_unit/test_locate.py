"""SourceMap: the line of every key path, never fooled by strings, comments or brackets."""

from __future__ import annotations

import tomllib

import pytest
from li_httpd.config import ConfigError, load_text
from li_httpd.config.locate import KeyPath, SourceMap, format_path

DOCUMENT = '''\
# comment [x] = 1 "quote
a = "x # [y] = 2"   # trailing comment
b = 'lit # = ['
[t1]
k = 1
arr = [
  1, # one ]
  "two,]",
  # a comment line inside the array
  3,
]
ml = """
line "" with # and [x] = 1
k2 = 5 \\"""
"""
after = 2
"q.k" = 3
d.e.f = 4
inl = { x = 1, y = { z = "}" } }
[[aot]]
n = 1
[[aot]]
n = 2
[aot.sub]
m = 3
[[aot]]
  [aot.sub]
  m = 4
mll = \'\'\'
x = 1
[not.a.table]
\'\'\'
last = """a"b""""
fin = 1
esc = "\\u0041\\"["
'key' = 5
[ t2 . "x y" ]
z = 1
[[t2."x y".arr]]
w = 1
[[t2."x y".arr]]
w = 2
"""
'''

EXPECTED: dict[KeyPath, int] = {
    ("a",): 2,
    ("b",): 3,
    ("t1",): 4,
    ("t1", "k"): 5,
    ("t1", "arr"): 6,
    ("t1", "arr", 0): 7,
    ("t1", "arr", 1): 8,
    ("t1", "arr", 2): 10,
    ("t1", "ml"): 12,
    ("t1", "after"): 16,
    ("t1", "q.k"): 17,
    ("t1", "d"): 18,
    ("t1", "d", "e", "f"): 18,
    ("t1", "inl"): 19,
    ("t1", "inl", "y", "z"): 19,
    ("aot",): 20,
    ("aot", 0): 20,
    ("aot", 0, "n"): 21,
    ("aot", 1): 22,
    ("aot", 1, "n"): 23,
    ("aot", 1, "sub"): 24,
    ("aot", 1, "sub", "m"): 25,
    ("aot", 2): 26,
    ("aot", 2, "sub"): 27,
    ("aot", 2, "sub", "m"): 28,
    ("aot", 2, "sub", "mll"): 29,
    ("aot", 2, "sub", "last"): 33,
    ("aot", 2, "sub", "fin"): 34,
    ("aot", 2, "sub", "esc"): 35,
    ("aot", 2, "sub", "key"): 36,
    ("t2",): 37,
    ("t2", "x y"): 37,
    ("t2", "x y", "z"): 38,
    ("t2", "x y", "arr"): 39,
    ("t2", "x y", "arr", 0): 39,
    ("t2", "x y", "arr", 0, "w"): 40,
    ("t2", "x y", "arr", 1): 41,
    ("t2", "x y", "arr", 1, "w"): 42,
}


def _document() -> str:
    # The trailing '"""' line above closes the Python string only; drop it.
    text = DOCUMENT.removesuffix('"""\n')
    tomllib.loads(text)  # the map only ever sees valid TOML
    return text


def test_document_is_what_the_table_describes() -> None:
    data = tomllib.loads(_document())
    assert data["a"] == "x # [y] = 2"
    assert data["t1"]["arr"] == [1, "two,]", 3]
    assert data["t1"]["ml"] == 'line "" with # and [x] = 1\nk2 = 5 """\n'
    assert data["aot"][2]["sub"]["mll"] == "x = 1\n[not.a.table]\n"
    assert data["aot"][2]["sub"]["last"] == 'a"b"'
    assert data["aot"][2]["sub"]["esc"] == 'A"['
    assert data["t2"]["x y"]["arr"] == [{"w": 1}, {"w": 2}]


@pytest.mark.parametrize(("path", "line"), sorted(EXPECTED.items(), key=lambda kv: kv[1]),
                         ids=lambda value: format_path(value) if isinstance(value, tuple)
                         else str(value))
def test_line_of(path: KeyPath, line: int) -> None:
    source = SourceMap(_document())
    assert source.line_of(path) == line


def test_unknown_paths_fall_back_to_the_nearest_ancestor() -> None:
    source = SourceMap(_document())
    assert source.line_of(("t1", "missing")) == 4
    assert source.line_of(("t1", "missing", "deeper")) == 4
    assert source.line_of(("aot", 1, "sub", "nope")) == 24
    assert source.line_of(("aot", 7)) == 20
    assert source.line_of(("nothing",)) == 1
    assert source.line_of(()) == 1


def test_nothing_inside_strings_or_comments_is_recorded() -> None:
    """A key that only appears inside a string or comment falls back to its nearest
    real ancestor (the top of the file for a top-level one)."""
    source = SourceMap(_document())
    assert source.line_of(("x",)) == 1
    assert source.line_of(("y",)) == 1
    assert source.line_of(("not",)) == 1
    assert source.line_of(("t1", "k2")) == EXPECTED[("t1",)]
    assert source.line_of(("aot", 2, "sub", "x")) == EXPECTED[("aot", 2, "sub")]


def test_crlf_line_endings() -> None:
    text = '[server]\r\nlisten = [\r\n  "127.0.0.1:1",\r\n  "127.0.0.1:2",\r\n]\r\n'
    source = SourceMap(text)
    assert source.line_of(("server", "listen", 1)) == 4


def test_dotted_keys_and_inline_tables_inside_array_of_tables() -> None:
    text = ('[[route]]\nname = "a"\nmatch.path = { type = "exact", value = "/a" }\n'
            "\n[[route]]\nname = \"b\"\nmatch.methods = [\n  \"GET\",\n  \"POST\",\n]\n"
            'match.headers = [{ name = "x-a", equals = "#=[" }, { name = "x-b", equals = "" }]\n'
            "[route.headers.egress]\ninject = { via = \"x\" }\n")
    tomllib.loads(text)
    source = SourceMap(text)
    assert source.line_of(("route", 0, "match", "path", "value")) == 3
    assert source.line_of(("route", 1)) == 5
    assert source.line_of(("route", 1, "match", "methods", 1)) == 9
    assert source.line_of(("route", 1, "match", "headers", 1, "name")) == 11
    assert source.line_of(("route", 1, "headers", "egress", "inject", "via")) == 13


@pytest.mark.parametrize(("path", "shown"), [
    (("server", "listen"), "server.listen"),
    (("route", 2, "match", "path"), "route[2].match.path"),
    (("routes", "GET /x"), 'routes."GET /x"'),
    (("routes", 3), "routes[3]"),
    (("a", 'q"k\\'), 'a."q\\"k\\\\"'),
    (("a.b",), '"a.b"'),
])
def test_format_path(path: KeyPath, shown: str) -> None:
    assert format_path(path) == shown


# -- through the pipeline: errors land on the offending key's line ----------------------------

def _error_lines(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml")
    return [(p.line, p.rule, p.display_path) for p in info.value.errors]


def test_pipeline_lines_after_tricky_strings() -> None:
    text = '''\
[server]
listen = """127.0.0.1:8080"""
profile = "dev"
host = 'api.example.com'   # "quoted" [comment] = x

[upstreams.p]
peers = [
  "http://10.0.0.1:8000",  # first [peer]
  # "http://10.0.0.9:8000",
  "http://u@10.0.0.2:8000",
]

[routes]
"GET /a x-h=#1" = "proxy:p"
"GET /b" = "proxy:q"
'''
    assert _error_lines(text) == [(10, "peer_url", "upstreams.p.peers[1].url")]
    fixed = text.replace("u@", "")
    assert _error_lines(fixed) == [(15, "unknown_target", 'routes."GET /b"')]


def test_pipeline_lines_for_list_form_and_canonical_routes() -> None:
    listed = ('routes = [\n  "GET /a -> static:healthcheck",\n\n  # comment, "->"\n'
              '  "GET /b -> proxy:nope",\n]\n[server]\nprofile = "dev"\n')
    assert _error_lines(listed) == [(5, "unknown_target", "routes[1]")]
    canonical = ('[server]\nprofile = "dev"\n\n[[route]]\nname = "a"\nstatic = "healthcheck"\n'
                 'match.path = { type = "exact", value = "/a" }\n\n[[route]]\nname = "b"\n'
                 'static = "healthcheck"\nmatch.path = { type = "exact", value = "/b//" }\n')
    assert _error_lines(canonical) == [(12, "path_normalized", "route[1].match.path")]
