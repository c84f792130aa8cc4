"""What deploy/Dockerfile says, read for the tests that stand in for a container build."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return result


@dataclass
class Image:
    """The runtime stage (the last FROM) of a Dockerfile."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    stopsignal: str = ""
    user: str = ""
    exposed: set[int] = field(default_factory=set)
    runs: list[str] = field(default_factory=list)
    # Where each COPY puts a file of the checkout: image path -> checkout path.
    copies: dict[str, Path] = field(default_factory=dict)

    def local(self, argument: str) -> str:
        """An image path the Dockerfile COPYs, as the checkout file it comes from."""
        return str(self.copies.get(argument, argument))


def runtime_stage(path: Path = DOCKERFILE) -> Image:
    image = Image()
    for keyword, arguments in instructions(path.read_text()):
        if keyword == "FROM":
            image = Image()  # only the last stage is the image
        elif keyword == "ENTRYPOINT":
            image.entrypoint = json.loads(arguments)
        elif keyword == "CMD":
            image.cmd = json.loads(arguments)
        elif keyword == "HEALTHCHECK":
            image.healthcheck = json.loads(arguments.partition(" CMD ")[2])
        elif keyword == "STOPSIGNAL":
            image.stopsignal = arguments
        elif keyword == "USER":
            image.user = arguments
        elif keyword == "EXPOSE":
            image.exposed |= {int(port.split("/")[0]) for port in arguments.split()}
        elif keyword == "RUN":
            image.runs.append(arguments)
        elif keyword == "COPY" and "--from" not in arguments:
            *sources, destination = shlex.split(arguments)
            if len(sources) == 1 and not destination.endswith("/"):
                image.copies[destination] = ROOT / sources[0]
            else:  # into a directory
                for source in sources:
                    image.copies[f"{destination.rstrip('/')}/{Path(source).name}"] = ROOT / source
    return image
