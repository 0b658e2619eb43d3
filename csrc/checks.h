// Argument validation shared by the CPU and CUDA entries of the row ops.
//
// Every message here has a twin in phasenets/cache/reference.py: the native ops and the pure-torch
// reference must fail the same way, so keep the two in step when editing either.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

namespace phasenets {

// The dtype as Python spells it ("float16", not "Half").
std::string dtype_name(at::ScalarType dtype);

bool is_storage_dtype(at::ScalarType dtype);  // float32, float16, bfloat16, int8
bool is_float_dtype(at::ScalarType dtype);    // float32, float16, bfloat16

// A storage table: 2-D, storage dtype, each row contiguous (any row stride).
void check_storage(const at::Tensor& storage, const char* op, const char* name);

// A 1-D int64 index on the storage's device.
void check_index(const at::Tensor& index, const at::Tensor& storage, const char* op,
                 const char* name);

// Validates the int8 scale (required for int8 storage, refused otherwise) and returns the number
// of row elements that share one channel's scale (0 when the storage is not int8).
int64_t check_scale(const std::optional<at::Tensor>& scale, const at::Tensor& storage,
                    const char* op, const char* name);

void check_output_dtype(at::ScalarType dtype, const char* op);

// `out` of gather_rows_out: contiguous [rows, row_elems], float dtype, on the storage's device.
void check_gather_output(const at::Tensor& out, const at::Tensor& storage, int64_t rows,
                         const char* op);

// `rows` of scatter_rows: [index rows, row_elems], float dtype, on the storage's device.
void check_scatter_rows(const at::Tensor& rows, const at::Tensor& storage, int64_t num_index,
                        const char* op);

// Raises IndexError naming the first index outside [0, num_rows).
void check_index_bounds(const int64_t* index, int64_t num_index, int64_t num_rows, const char* op,
                        const char* name);

// Raises naming the first index that repeats an earlier one (a scatter must not race with itself).
void check_index_unique(const int64_t* index, int64_t num_index, const char* op);

}  // namespace phasenets
