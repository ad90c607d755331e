# petrel: the two commands of the README, and a few more.
#   make run    install missing packages, build, train the default job (MLP on Fashion-MNIST)
#   make test   build and run every test (CTest); ends with "N passed, N failed"
BUILD ?= build
JOBS  ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all build run test test-asan test-tsan bench deps format clean

all: build

deps:
	@scripts/deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

run: deps build
	./$(BUILD)/petrel train --model mlp --data fashion-mnist --epochs 5 --out runs/mlp

test: deps build
	@scripts/run-tests.sh $(BUILD)

# The unit and network tests under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPETREL_SANITIZE=address,undefined
	cmake --build build-asan -j$(JOBS)
	@scripts/run-tests.sh build-asan -L "unit|net"

# The unit and network tests under ThreadSanitizer.
test-tsan: deps
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DPETREL_SANITIZE=thread
	cmake --build build-tsan -j$(JOBS)
	@scripts/run-tests.sh build-tsan -L "unit|net"

# Configures again after deps.sh --bench: CMake then finds the MPI it may just have
# installed, and builds bench/mpi_allreduce.c for petrel bench allreduce.
bench: deps build
	@scripts/deps.sh --bench
	cmake -S . -B $(BUILD) >/dev/null
	cmake --build $(BUILD) -j$(JOBS)
	./$(BUILD)/bench_gemm
	./$(BUILD)/bench_train
	./$(BUILD)/petrel bench net
	./$(BUILD)/petrel bench allreduce
	./$(BUILD)/petrel bench dp
	./$(BUILD)/petrel bench ps
	./$(BUILD)/petrel bench hogwild

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) build-asan build-tsan
