#include "checks.h"

#include <c10/util/Exception.h>

#include <unordered_map>

namespace phasenets {

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    default: return c10::toString(dtype);
  }
}

bool is_float_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

bool is_storage_dtype(at::ScalarType dtype) {
  return is_float_dtype(dtype) || dtype == at::kChar;
}

void check_storage(const at::Tensor& storage, const char* op, const char* name) {
  TORCH_CHECK(storage.dim() == 2, op, ": ", name, " must be a 2-D tensor [rows, row_elems], got shape ",
              storage.sizes());
  TORCH_CHECK(is_storage_dtype(storage.scalar_type()), op, ": ", name,
              " dtype must be one of float32, float16, bfloat16, int8, got ",
              dtype_name(storage.scalar_type()));
  // Rows are copied as contiguous runs; the row stride itself is free (slices of a table work).
  TORCH_CHECK(storage.size(1) <= 1 || storage.stride(1) == 1, op, ": ", name,
              " must have contiguous rows (stride 1 along dim 1), got strides ", storage.strides(),
              "; call .contiguous() first");
}

void check_index(const at::Tensor& index, const at::Tensor& storage, const char* op,
                 const char* name) {
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, op,
              ": index must be a 1-D int64 tensor, got a ", index.dim(), "-D ",
              dtype_name(index.scalar_type()), " tensor");
  TORCH_CHECK(index.device() == storage.device(), op, ": index is on ", index.device(), " but ",
              name, " is on ", storage.device());
}

int64_t check_scale(const std::optional<at::Tensor>& scale, const at::Tensor& storage,
                    const char* op, const char* name) {
  if (storage.scalar_type() != at::kChar) {
    TORCH_CHECK(!scale.has_value(), op, ": scale is only used with int8 ", name, ", but ", name,
                " is ", dtype_name(storage.scalar_type()));
    return 0;
  }
  TORCH_CHECK(scale.has_value(), op, ": int8 ", name, " needs a per-channel float32 scale");
  TORCH_CHECK(scale->dim() == 1 && scale->scalar_type() == at::kFloat, op,
              ": scale must be a 1-D float32 tensor [channels], got a ", scale->dim(), "-D ",
              dtype_name(scale->scalar_type()), " tensor");
  TORCH_CHECK(scale->device() == storage.device(), op, ": scale is on ", scale->device(), " but ",
              name, " is on ", storage.device());
  const int64_t channels = scale->size(0);
  const int64_t row_elems = storage.size(1);
  TORCH_CHECK(channels > 0 && row_elems % channels == 0, op, ": scale has ", channels,
              " channels, which does not divide the ", row_elems, " elements of a row");
  return row_elems / channels;
}

void check_output_dtype(at::ScalarType dtype, const char* op) {
  TORCH_CHECK(is_float_dtype(dtype), op,
              ": out dtype must be one of float32, float16, bfloat16, got ", dtype_name(dtype));
}

void check_gather_output(const at::Tensor& out, const at::Tensor& storage, int64_t rows,
                         const char* op) {
  check_output_dtype(out.scalar_type(), op);
  TORCH_CHECK(out.dim() == 2 && out.size(0) == rows && out.size(1) == storage.size(1) &&
                  out.is_contiguous(),
              op, ": out must be a contiguous tensor of shape [", rows, ", ", storage.size(1),
              "], got shape ", out.sizes(), " with strides ", out.strides());
  TORCH_CHECK(out.device() == storage.device(), op, ": out is on ", out.device(),
              " but src is on ", storage.device());
}

void check_scatter_rows(const at::Tensor& rows, const at::Tensor& storage, int64_t num_index,
                        const char* op) {
  TORCH_CHECK(rows.dim() == 2 && rows.size(0) == num_index && rows.size(1) == storage.size(1), op,
              ": rows must have shape [", num_index, ", ", storage.size(1),
              "] (one row per index), got shape ", rows.sizes());
  TORCH_CHECK(is_float_dtype(rows.scalar_type()), op,
              ": rows dtype must be one of float32, float16, bfloat16, got ",
              dtype_name(rows.scalar_type()));
  TORCH_CHECK(rows.device() == storage.device(), op, ": rows is on ", rows.device(),
              " but dst is on ", storage.device());
}

void check_index_bounds(const int64_t* index, int64_t num_index, int64_t num_rows, const char* op,
                        const char* name) {
  for (int64_t i = 0; i < num_index; ++i) {
    TORCH_CHECK_INDEX(index[i] >= 0 && index[i] < num_rows, op, ": index[", i, "] = ", index[i],
                      " is out of range for ", name, " with ", num_rows, " rows (valid: 0 <= index < ",
                      num_rows, ")");
  }
}

void check_index_unique(const int64_t* index, int64_t num_index, const char* op) {
  std::unordered_map<int64_t, int64_t> first_position;
  first_position.reserve(static_cast<size_t>(num_index));
  for (int64_t i = 0; i < num_index; ++i) {
    const auto [it, inserted] = first_position.emplace(index[i], i);
    TORCH_CHECK(inserted, op, ": index holds row ", index[i], " twice (positions ", it->second,
                " and ", i, "); each row may be written once per call");
  }
}

}  // namespace phasenets
