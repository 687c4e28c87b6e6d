#include "cublas_dl.h"

#include <dlfcn.h>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace glm {

namespace {
Cublas g_cublas;
bool g_tried = false;
bool g_ok = false;
std::string g_why;
std::mutex g_mutex;

template <typename F>
bool sym(void* lib, const char* name, F* out, std::string* why) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  if (!*out) {
    *why = std::string(name) + " is missing from " + g_cublas.path;
    return false;
  }
  return true;
}
}  // namespace

const Cublas* loadCublas(std::string* why) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_tried) {
    if (!g_ok && why) *why = g_why;
    return g_ok ? &g_cublas : nullptr;
  }
  g_tried = true;
  std::vector<std::string> dirs;
  const char* env = std::getenv("GLMTOOL_CUBLAS");
  std::vector<std::string> candidates;
  if (env && *env) candidates.push_back(env);
  candidates.push_back("libcublas.so.13");
  for (const char* d : {"/usr/local/cuda/lib64/", "/usr/local/cuda-13/lib64/", "/usr/local/cuda-13.0/lib64/",
                        "/usr/local/cuda/targets/x86_64-linux/lib/", "/usr/lib/x86_64-linux-gnu/"}) {
    candidates.push_back(std::string(d) + "libcublas.so.13");
  }
  std::string errors;
  void* lib = nullptr;
  for (const std::string& c : candidates) {
    // cuBLAS needs cuBLASLt beside it; load it first (global) so a cuBLAS found by full path
    // resolves its Lt from the same folder even when that folder is not on the search path.
    std::string::size_type slash = c.rfind('/');
    if (slash != std::string::npos) dlopen((c.substr(0, slash + 1) + "libcublasLt.so.13").c_str(), RTLD_NOW | RTLD_GLOBAL);
    lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) {
      g_cublas.path = c;
      break;
    }
    const char* e = dlerror();
    if (errors.empty()) errors = e ? e : c + ": not found";
  }
  if (!lib) {
    g_why = "cuBLAS 13 (libcublas.so.13) was not found: " + errors +
            " (install CUDA 13's cuBLAS or set GLMTOOL_CUBLAS to the library file)";
    if (why) *why = g_why;
    return nullptr;
  }
  Dl_info info;
  if (dladdr(dlsym(lib, "cublasCreate_v2"), &info) && info.dli_fname) g_cublas.path = info.dli_fname;
  bool ok = sym(lib, "cublasCreate_v2", &g_cublas.create, &g_why) && sym(lib, "cublasDestroy_v2", &g_cublas.destroy, &g_why) &&
            sym(lib, "cublasSetStream_v2", &g_cublas.setStream, &g_why) &&
            sym(lib, "cublasSetWorkspace_v2", &g_cublas.setWorkspace, &g_why) &&
            sym(lib, "cublasGetVersion_v2", &g_cublas.getVersion, &g_why) && sym(lib, "cublasGemmEx", &g_cublas.gemmEx, &g_why) &&
            sym(lib, "cublasGemmStridedBatchedEx", &g_cublas.gemmStridedBatchedEx, &g_why);
  if (!ok) {
    if (why) *why = g_why;
    return nullptr;
  }
  g_ok = true;
  return &g_cublas;
}

}  // namespace glm
