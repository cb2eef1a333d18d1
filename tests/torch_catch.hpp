// Catch2 for test files that use LibTorch. LibTorch's logging headers define a CHECK macro that aborts the
// process; it must not replace Catch's CHECK, so LibTorch comes first and its CHECK is dropped.
#pragma once

#include <torch/torch.h>

#undef CHECK
#include <catch2/catch.hpp>
