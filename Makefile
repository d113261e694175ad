# SPDX-License-Identifier: MIT
# Makefile - the front door: wraps CMake so the usual verbs work.
#
#   make            build the library, tests and benchmarks (build/)
#   make demo       install missing deps, build, run the main job
#   make test       install missing deps, build, run the whole suite
#   make bench      build optimised and print sluice vs the Go anchors
#   make asan       the suite under clang ASan+UBSan (build-asan/)
#   make tsan       the concurrency tests under clang TSan (build-tsan/)
#   make fuzz       libFuzzer on the codecs for FUZZ_SECONDS (default 60)
#   make install    install into PREFIX (default /usr/local)
#   make format     clang-format every C file in place
BUILD  ?= build
PREFIX ?= /usr/local
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all demo deps test bench asan tsan fuzz install format clean

all: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)

deps:
	scripts/deps.sh

# The main job on its embedded default: stdin.  200 generated messages go
# through a flaky handler (examples/demo-handler.sh); the summary shows the
# retries, timeouts and dead letters.  Exit 1 (some dead-lettered) is the
# expected outcome here, so only worse fails the target.
demo: deps all
	@echo "== seq 200 | sluice consume -j 8 --timeout 1s --exec examples/demo-handler.sh"
	@rm -f $(BUILD)/demo-dead.jsonl; \
	seq 200 | $(BUILD)/sluice consume -j 8 --timeout 1s --max-attempts 3 \
		--backoff 50ms:500ms --dead-letter $(BUILD)/demo-dead.jsonl \
		--exec 'examples/demo-handler.sh >/dev/null'; \
	status=$$?; echo "dead letters (JSON lines): $(BUILD)/demo-dead.jsonl"; \
	[ $$status -le 1 ]

test: deps all
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench:
	scripts/deps.sh --bench
	cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build-release -j $(JOBS) --target bench_engine sluice_cli \
		fake_nsqd bench_nsq_pub web_service
	bench/run.sh build-release
	bench/bench_overhead.sh build-release
	bench/bench_nsq.sh build-release
	bench/bench_publish.sh build-release
	bench/bench_web.sh build-release

asan: deps
	CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug \
		-DSLUICE_SANITIZE=address,undefined -DSLUICE_WERROR=ON
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j $(JOBS)

tsan: deps
	CC=clang cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug \
		-DSLUICE_SANITIZE=thread -DSLUICE_WERROR=ON
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
		ctest --output-on-failure -j $(JOBS) -L concurrency

# libFuzzer on each codec for FUZZ_SECONDS (new inputs go to build-fuzz/).
FUZZ_SECONDS ?= 60
fuzz: deps all
	mkdir -p build-fuzz/corpus-framing
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
		-Iinclude -I$(BUILD)/include -Isrc src/proto/framing.c \
		src/util/alloc.c tests/fuzz/fuzz_framing.c -o build-fuzz/fuzz_framing
	build-fuzz/fuzz_framing -max_total_time=$(FUZZ_SECONDS) \
		build-fuzz/corpus-framing tests/fuzz/corpus/framing
	mkdir -p build-fuzz/corpus-nsq
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
		-Iinclude -I$(BUILD)/include -Isrc src/proto/nsq.c \
		src/util/alloc.c tests/fuzz/fuzz_nsq.c -o build-fuzz/fuzz_nsq
	build-fuzz/fuzz_nsq -max_total_time=$(FUZZ_SECONDS) \
		build-fuzz/corpus-nsq tests/fuzz/corpus/nsq
	mkdir -p build-fuzz/corpus-snappy
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
		-Iinclude -I$(BUILD)/include -Isrc src/proto/nsq_snappy.c \
		tests/fuzz/fuzz_snappy.c -lsnappy -o build-fuzz/fuzz_snappy
	build-fuzz/fuzz_snappy -max_total_time=$(FUZZ_SECONDS) \
		build-fuzz/corpus-snappy tests/fuzz/corpus/snappy

install: all
	cmake --install $(BUILD) --prefix $(PREFIX)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-release build-asan build-tsan
