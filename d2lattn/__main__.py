"""`python -m d2lattn`: which backend is selected and what this environment can import."""

from d2lattn import _backend


def main():
    name = _backend.selected()
    versions = _backend.available()
    print(f"d2lattn backend: {name} (from ${_backend.ENV_VAR}, default {_backend.DEFAULT})")
    print(f"framework: {', '.join(_backend.FRAMEWORKS[name])} {versions[name] or 'NOT INSTALLED'}")
    if versions[name] is None:
        print(f"install it with: {_backend.INSTALL[name]}")
    print("importable here:")
    for backend, version in versions.items():
        print(f"  {backend:<11} {version or '-'}")


if __name__ == "__main__":
    main()
