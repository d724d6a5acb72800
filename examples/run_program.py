"""Run one program on one frame under a decision, with two toy in-process backends.

The toy backends stand in for real models (the backend services serve real ones):
the detector reports one fixed box, the VQA model always answers "red".

    python examples/run_program.py
"""

from pathlib import Path

import numpy as np

from fmprog.backends import BackendRegistry, BackendSpec, Detection
from fmprog.program import Executor, compile_program


class ToyDetector:  # detect(image, noun) -> list[Detection]
    def detect(self, image: np.ndarray, noun: str) -> list[Detection]:
        return [Detection(box=(2, 2, 20, 20), score=0.9)]


class ToyVQA:  # vqa(image, question) -> str
    def vqa(self, image: np.ndarray, question: str) -> str:
        return "red"


def main() -> None:
    registry = BackendRegistry.from_specs(
        [
            BackendSpec(name="detect-small", function="detect", cost=172),
            BackendSpec(name="vqa-large", function="vqa", cost=73400),
        ],
        {"detect-small": ToyDetector(), "vqa-large": ToyVQA()},
    )
    source = (Path(__file__).parent / "programs" / "leftmost_color.py").read_text()
    program = compile_program(source)
    decision = {"find@3:23": "detect-small", "query@7:19": "vqa-large"}  # a backend per call site
    image = np.zeros((64, 64, 3), np.uint8)  # H x W x 3, uint8 RGB
    trace = Executor(registry).run(program, image, decision)
    print(trace.model_dump_json(indent=2, exclude={"latency_s"}))


if __name__ == "__main__":
    main()
