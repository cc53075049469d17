"""A greeting, packaged as a wheel by kiln build."""


def greeting(name: str = "world") -> str:
    return f"hello, {name}, from a kiln-built wheel"


def main() -> None:
    print(greeting())
