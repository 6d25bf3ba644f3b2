import pytest

from cnnlab.registry import Registry, UnknownName


def test_register_and_get():
    r = Registry("widget")

    @r.register("a")
    def make_a():
        return 1

    assert r.get("a") is make_a
    assert "a" in r and r.names() == ["a"]


def test_duplicate_name_raises():
    r = Registry("widget")
    r.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        r.register("a")(lambda: 2)


def test_unknown_name_lists_choices():
    r = Registry("widget")
    r.register("alpha")(lambda: 1)
    r.register("beta")(lambda: 2)
    with pytest.raises(UnknownName) as e:
        r.get("gamma")
    assert "unknown widget 'gamma'" in str(e.value) and "alpha, beta" in str(e.value)
