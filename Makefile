# weft: compile and run distributed transformer models (see README.md).
#
#   make          build build/weft (installs missing Debian packages first)
#   make test     build and run the test suite (and build the benchmarks); ends with "N passed, N failed"
#   make demo     the tour: check every model, compile one, verify, inspect, draw, simulate
#   make asan     the test suite under AddressSanitizer + UBSan (build-asan/)
#   make fuzz     fuzz with libFuzzer: FUZZ=frontend (model files) or FUZZ=plan (plan files), FUZZ_SECONDS=60
#   make pictures redraw the pictures in docs/ that README.md shows
#   make clean
#
# CI=true turns warnings into errors.

CC        ?= cc
BUILD     ?= build
CUDA_HOME ?= /usr/local/cuda
CFLAGS    ?= -O2 -g
WARN      := -std=c11 -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
             $(if $(filter true,$(CI)),-Werror)
CPPFLAGS  += -D_POSIX_C_SOURCE=200809L -Iir -Icompiler -Iruntime -Itools
XML_CFLAGS = $(shell pkg-config --cflags libxml-2.0 libcgraph libgvc openblas ompi-c cairo)
XML_LIBS   = $(shell pkg-config --libs libxml-2.0 libcgraph libgvc openblas ompi-c cairo) -ldl

IR_OBJ       := $(patsubst %.c,$(BUILD)/%.o,$(wildcard ir/*.c))
COMPILER_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard compiler/*.c)) $(BUILD)/schema.o
RUNTIME_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(wildcard runtime/*.c))
TOOL_OBJ     := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/*.c))
TESTS        := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
BENCH        := $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/*.c))
LIBS         := $(BUILD)/libweft-compiler.a $(BUILD)/libweft-runtime.a $(BUILD)/libweft-ir.a

.PHONY: all deps test demo asan fuzz pictures clean
all: deps
	@$(MAKE) --no-print-directory $(BUILD)/weft

deps:
	@tools/deps.sh

$(BUILD)/weft: $(TOOL_OBJ) $(LIBS)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(XML_LIBS) -lm -lpthread

$(BUILD)/libweft-ir.a: $(IR_OBJ)
	$(AR) rcs $@ $^
$(BUILD)/libweft-compiler.a: $(COMPILER_OBJ)
	$(AR) rcs $@ $^
$(BUILD)/libweft-runtime.a: $(RUNTIME_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(WARN) $(CFLAGS) $(XML_CFLAGS) -MMD -MP -c $< -o $@

# The schema travels inside the binary: a byte array made from models/weft.rng.
$(BUILD)/schema.c: models/weft.rng
	@mkdir -p $(@D)
	@{ echo '/* generated from models/weft.rng by the Makefile; do not edit */'; \
	   echo 'extern const char fe_schema_rng[];'; echo 'const char fe_schema_rng[] = {'; \
	   od -An -v -tx1 $< | sed -e 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '0x00};'; } > $@
$(BUILD)/schema.o: $(BUILD)/schema.c
	$(CC) $(WARN) $(CFLAGS) -c $< -o $@

$(BUILD)/tests/%: tests/%.c tests/testing.h tests/launches.h $(LIBS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(WARN) $(CFLAGS) $(XML_CFLAGS) -Itests -o $@ $< $(LIBS) $(XML_LIBS) -lcmocka -lm -lpthread

# Benchmarks that time the plan's kernels (bench/README.md).
$(BUILD)/bench/%: bench/%.c tests/launches.h $(LIBS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(WARN) $(CFLAGS) $(XML_CFLAGS) -Itests -o $@ $< $(LIBS) $(XML_LIBS) -lm -lpthread

test: deps
	@$(MAKE) --no-print-directory $(BUILD)/weft $(TESTS) $(BENCH)
	@tests/run.sh $(BUILD)

demo: deps
	@$(MAKE) --no-print-directory $(BUILD)/weft
	@WEFT=$(BUILD)/weft DEMO_OUT=$(BUILD)/demo tools/demo.sh

ASAN := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan CFLAGS="$(ASAN)" LDFLAGS="$(ASAN)" \
	    build-asan/weft $(patsubst $(BUILD)/%,build-asan/%,$(TESTS))
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
	    UBSAN_OPTIONS=print_stacktrace=1 tests/run.sh build-asan

FUZZ_SECONDS ?= 60
FUZZ ?= frontend
fuzz: all
	@tools/deps.sh clang libclang-rt-14-dev
	@mkdir -p build-fuzz/corpus-$(FUZZ)
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang \
	    CFLAGS="-O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all" \
	    build-fuzz/libweft-compiler.a build-fuzz/libweft-ir.a
	clang $(CPPFLAGS) -Itests -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all $(XML_CFLAGS) \
	    -o build-fuzz/fuzz_$(FUZZ) tests/fuzz_$(FUZZ).c build-fuzz/libweft-compiler.a build-fuzz/libweft-ir.a $(XML_LIBS) -lm -lpthread
	@if [ $(FUZZ) = frontend ]; then cp models/*.xml tests/bad/*.xml build-fuzz/corpus-frontend/; \
	 else $(BUILD)/weft compile models/gpt2.xml --variant tiny --world-size 8 --tp 2 --pp 2 --global-batch-size 8 \
	      -o build-fuzz/corpus-plan/gpt2.plan >/dev/null && \
	      $(BUILD)/weft compile models/t5.xml --variant tiny --world-size 10 --tp 2 --pp 2 --etp 1 --epp 1 \
	      -o build-fuzz/corpus-plan/t5.plan >/dev/null; fi
	@build-fuzz/fuzz_$(FUZZ) -max_total_time=$(FUZZ_SECONDS) -max_len=262144 \
	    $(if $(filter frontend,$(FUZZ)),-dict=tests/fuzz_frontend.dict) \
	    build-fuzz/corpus-$(FUZZ) > build-fuzz/fuzz-$(FUZZ).log 2>&1; rc=$$?; tail -n 25 build-fuzz/fuzz-$(FUZZ).log; exit $$rc

pictures: all
	@mkdir -p docs
	$(BUILD)/weft dot models/gpt2.xml --world-size 8 --tp 2 --pp 2 -o docs/gpt2-tp2-pp2.svg
	$(BUILD)/weft dot models/gpt2.xml --variant tiny --tp 2 --sequence-parallel --detail op -o docs/gpt2-tiny-sp-ops.svg
	$(BUILD)/weft dot models/llava.xml --world-size 24 --tp 4 --pp 2 --etp 2 --epp 2 -o docs/llava-etp2-epp2.svg
	$(BUILD)/weft simulate models/gpt2.xml --world-size 16 --tp 2 --pp 4 --micro-batch-size 4 --global-batch-size 128 --bf16 \
	    -o docs/schedule-gpt2-1f1b.svg
	WEFT=$(BUILD)/weft DEMO_OUT=$(BUILD)/demo tools/demo.sh > /dev/null
	cp $(BUILD)/demo/loss.svg docs/loss-demo.svg

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
