# The two commands of the README:
#   make run    the main job: set-up, then the offline Multi-SC graph on the sample photos
#   make test   the tests (what CI runs after fmt and clippy)

CARGO ?= cargo
GRAPH ?= graphs/multisc-lite.toml
# The release binary, wherever cargo builds (CARGO_TARGET_DIR is honoured).
BIN ?= $(or $(CARGO_TARGET_DIR),target)/release/dataflow

.PHONY: run test setup setup-system build bench

# Offline-tier assets (ONNX Runtime, ISNet, SymSpell, LPIPS heads, sample photos):
# all the main job needs.
setup:
	scripts/setup-assets

# Debian packages the tests, live sources and codec baselines use.
setup-system:
	scripts/setup-system prometheus ffmpeg chromium libheif-examples iproute2 util-linux

build:
	$(CARGO) build --release

run: setup build
	$(BIN) run $(GRAPH)

# The model tests skip when assets are missing unless this is set: after `setup` they must run.
# Kodak24 tests run only when DATAFLOW_KODAK names the folder (scripts/test).
test: export DATAFLOW_REQUIRE_ASSETS = 1
test: setup setup-system
	CARGO="$(CARGO)" scripts/test

bench:
	$(CARGO) bench --bench engine
