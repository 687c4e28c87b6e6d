// Node-API binding of glmtool's CUDA engine. Everything it exports is declared, typed, in
// src/runtime/backends/cuda-addon.ts; keep the two in step.
#include <napi.h>

#include <exception>
#include <memory>
#include <string>

#include "engine.h"

namespace {

// 4: the Engine takes feature flags (src/models/arch.ts EngineFlags), not a generation number.
constexpr const char* kAddonVersion = "4";

template <typename F>
auto guard(const Napi::Env& env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

int intArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}

Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  glm::DeviceInfo d = guard(env, [] { return glm::probe(); });
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", d.ok);
  o.Set("reason", d.reason);
  o.Set("name", d.name);
  o.Set("computeCapability", std::to_string(d.ccMajor) + "." + std::to_string(d.ccMinor));
  o.Set("multiprocessors", d.multiprocessors);
  o.Set("totalMemory", (double)d.totalMemory);
  o.Set("freeMemory", (double)d.freeMemory);
  o.Set("l2Bytes", (double)d.l2Bytes);
  o.Set("peakBandwidth", d.peakBandwidth);
  o.Set("driverVersion", d.driverVersion);
  o.Set("runtimeVersion", d.runtimeVersion);
  o.Set("cublasPath", d.cublasPath);
  o.Set("cublasVersion", d.cublasVersion);
  return o;
}

Napi::Value MeasureCopyBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double bytes = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 1073741824.0;
  const int iters = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 10;
  return Napi::Number::New(env, guard(env, [&] { return glm::measureCopyBandwidth((size_t)bytes, iters); }));
}

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {
                           InstanceMethod("slotBytes", &EngineWrap::SlotBytes),
                           InstanceMethod("upload", &EngineWrap::Upload),
                           InstanceMethod("finishLoad", &EngineWrap::FinishLoad),
                           InstanceMethod("forward", &EngineWrap::Forward),
                           InstanceMethod("decodeMany", &EngineWrap::DecodeMany),
                           InstanceMethod("memory", &EngineWrap::Memory),
                           InstanceMethod("info", &EngineWrap::Info),
                           InstanceMethod("setUseGraph", &EngineWrap::SetUseGraph),
                           InstanceMethod("setUsePdl", &EngineWrap::SetUsePdl),
                           InstanceMethod("dispose", &EngineWrap::Dispose),
                       });
  }

  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "Engine(config) needs a config object");
    Napi::Object o = info[0].As<Napi::Object>();
    auto num = [&](const char* k) -> double {
      Napi::Value v = o.Get(k);
      if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string("config.") + k + " must be a number");
      return v.As<Napi::Number>().DoubleValue();
    };
    auto flag = [&](const char* k, bool dflt) -> bool {
      Napi::Value v = o.Get(k);
      return v.IsBoolean() ? v.As<Napi::Boolean>().Value() : dflt;
    };
    auto need = [&](const char* k) -> bool {
      Napi::Value v = o.Get(k);
      if (!v.IsBoolean()) throw Napi::TypeError::New(env, std::string("config.") + k + " must be a boolean");
      return v.As<Napi::Boolean>().Value();
    };
    glm::EngineConfig c;
    c.interleavedQkv = need("interleavedQkv");
    c.rotary2d = need("rotary2d");
    c.rmsnorm = need("rmsnorm");
    c.deepnormAlpha = (float)num("deepnormAlpha");
    c.swiglu = need("swiglu");
    c.ropeBase = num("ropeBase");
    c.roundInvFreqToHalf = need("roundInvFreqToHalf");
    c.dtype = (int)num("dtype");
    c.layers = (int)num("layers");
    c.hidden = (int)num("hidden");
    c.heads = (int)num("heads");
    c.kvHeads = (int)num("kvHeads");
    c.headDim = (int)num("headDim");
    c.ffn = (int)num("ffn");
    c.vocab = (int)num("vocab");
    c.maxLength = (int)num("maxLength");
    c.prefixLength = (int)num("prefixLength");
    c.eps = (float)num("eps");
    c.qkvBias = flag("qkvBias", true);
    c.denseBias = flag("denseBias", false);
    c.mlpBias = flag("mlpBias", false);
    c.postLayerNorm = flag("postLayerNorm", true);
    c.useGraph = flag("useGraph", true);
    if (o.Get("quantBits").IsNumber()) c.quantBits = (int)num("quantBits");
    if (o.Get("groupSize").IsNumber()) c.groupSize = (int)num("groupSize");
    if (o.Get("kvDtype").IsNumber()) c.kvDtype = (int)num("kvDtype");
    engine_ = guard(env, [&] { return std::make_unique<glm::Engine>(c); });
  }

 private:
  std::unique_ptr<glm::Engine> engine_;

  glm::Engine& eng(const Napi::Env& env) {
    if (!engine_) throw Napi::Error::New(env, "the CUDA engine was disposed");
    return *engine_;
  }

  Napi::Value SlotBytes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const int kind = intArg(info, 0, "kind"), layer = intArg(info, 1, "layer");
    return Napi::Number::New(env, (double)guard(env, [&] { return eng(env).slotBytes(kind, layer); }));
  }

  Napi::Value Upload(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const int kind = intArg(info, 0, "kind"), layer = intArg(info, 1, "layer");
    if (info.Length() < 4 || !info[2].IsNumber() || !info[3].IsTypedArray())
      throw Napi::TypeError::New(env, "upload(kind, layer, offset, bytes: Uint8Array)");
    const double offset = info[2].As<Napi::Number>().DoubleValue();
    // napi_get_typedarray_info's data pointer, not ArrayBuffer().Data(): the torch reader's
    // pieces live in a SharedArrayBuffer (it checks their CRC-32 on a worker), and
    // napi_get_arraybuffer_info refuses a SharedArrayBuffer ("Invalid argument").
    napi_typedarray_type type;
    size_t length = 0, byteOffset = 0;
    void* raw = nullptr;
    napi_value buffer;
    if (napi_get_typedarray_info(env, info[3], &type, &length, &raw, &buffer, &byteOffset) != napi_ok)
      throw Napi::TypeError::New(env, "upload: cannot read the bytes' typed array");
    const uint8_t* data = static_cast<const uint8_t*>(raw);
    const size_t bytes = info[3].As<Napi::TypedArray>().ByteLength();
    guard(env, [&] {
      eng(env).upload(kind, layer, (size_t)offset, data, bytes);
      return 0;
    });
    return env.Undefined();
  }

  Napi::Value FinishLoad(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    guard(env, [&] {
      eng(env).finishLoad();
      return 0;
    });
    return env.Undefined();
  }

  // forward(ids, positions, blocks|null, past, bidirectional, logitsMode, logitsOut|null, sampling|null) -> token
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 8 || !info[0].IsTypedArray() || !info[1].IsTypedArray())
      throw Napi::TypeError::New(env, "forward(ids, positions, blocks, past, bidirectional, logitsMode, logits, sampling)");
    Napi::Int32Array ids = info[0].As<Napi::Int32Array>();
    Napi::Int32Array pos = info[1].As<Napi::Int32Array>();
    const int S = (int)ids.ElementLength();
    if ((int)pos.ElementLength() != S) throw Napi::RangeError::New(env, "positions must have one entry per id");
    const int32_t* blocks = nullptr;
    if (info[2].IsTypedArray()) {
      Napi::Int32Array b = info[2].As<Napi::Int32Array>();
      if ((int)b.ElementLength() != S) throw Napi::RangeError::New(env, "blocks must have one entry per id");
      blocks = b.Data();
    }
    const int past = intArg(info, 3, "past"), bidi = intArg(info, 4, "bidirectional"), mode = intArg(info, 5, "logitsMode");
    float* out = nullptr;
    if (mode != 0) {
      if (!info[6].IsTypedArray()) throw Napi::TypeError::New(env, "logits output must be a Float32Array");
      Napi::Float32Array f = info[6].As<Napi::Float32Array>();
      const size_t need = (size_t)eng(env).vocab() * (mode == 2 ? S : 1);
      if (f.ElementLength() < need) throw Napi::RangeError::New(env, "the logits output holds " + std::to_string(f.ElementLength()) + " floats, " + std::to_string(need) + " are needed");
      out = f.Data();
    }
    glm::Sampling s;
    glm::Sampling* sp = nullptr;
    if (info[7].IsObject()) {
      Napi::Object o = info[7].As<Napi::Object>();
      auto n = [&](const char* k, double d) {
        Napi::Value v = o.Get(k);
        return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : d;
      };
      s.greedy = o.Get("greedy").ToBoolean().Value() ? 1 : 0;
      s.temperature = (float)n("temperature", 1);
      s.topK = (int)n("topK", 0);
      s.topP = (float)n("topP", 1);
      s.random = (float)n("random", 0);
      s.vocabLimit = (int)n("vocabLimit", 0);
      sp = &s;
    }
    const int token = guard(env, [&] { return eng(env).forward(ids.Data(), pos.Data(), blocks, S, past, bidi, mode, out, sp); });
    return Napi::Number::New(env, token);
  }

  // decodeMany(firstId, positions, blocks|null, past, bidirectional, sampling, randoms|null, tokensOut) -> undefined
  Napi::Value DecodeMany(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 8 || !info[1].IsTypedArray() || !info[7].IsTypedArray() || !info[5].IsObject())
      throw Napi::TypeError::New(env, "decodeMany(firstId, positions, blocks, past, bidirectional, sampling, randoms, tokens)");
    const int first = intArg(info, 0, "firstId");
    Napi::Int32Array pos = info[1].As<Napi::Int32Array>();
    const int n = (int)pos.ElementLength();
    const int32_t* blocks = nullptr;
    if (info[2].IsTypedArray()) {
      Napi::Int32Array b = info[2].As<Napi::Int32Array>();
      if ((int)b.ElementLength() != n) throw Napi::RangeError::New(env, "blocks must have one entry per step");
      blocks = b.Data();
    }
    const int past = intArg(info, 3, "past"), bidi = intArg(info, 4, "bidirectional");
    Napi::Object o = info[5].As<Napi::Object>();
    auto num = [&](const char* k, double d) {
      Napi::Value v = o.Get(k);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : d;
    };
    glm::Sampling s;
    s.greedy = o.Get("greedy").ToBoolean().Value() ? 1 : 0;
    s.temperature = (float)num("temperature", 1);
    s.topK = (int)num("topK", 0);
    s.topP = (float)num("topP", 1);
    s.random = 0;
    s.vocabLimit = (int)num("vocabLimit", 0);
    const float* randoms = nullptr;
    if (info[6].IsTypedArray()) {
      Napi::Float32Array r = info[6].As<Napi::Float32Array>();
      if ((int)r.ElementLength() != n) throw Napi::RangeError::New(env, "randoms must have one entry per step");
      randoms = r.Data();
    }
    Napi::Int32Array out = info[7].As<Napi::Int32Array>();
    if ((int)out.ElementLength() < n) throw Napi::RangeError::New(env, "the tokens output holds fewer entries than steps");
    guard(env, [&] {
      eng(env).decodeMany(first, pos.Data(), blocks, n, past, bidi, s, randoms, out.Data());
      return 0;
    });
    return env.Undefined();
  }

  Napi::Value Memory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    glm::MemoryStats m = guard(env, [&] { return eng(env).memory(); });
    Napi::Object o = Napi::Object::New(env);
    o.Set("allocated", (double)m.allocated);
    o.Set("peakAllocated", (double)m.peakAllocated);
    o.Set("deviceUsed", (double)m.deviceUsed);
    o.Set("peakDeviceUsed", (double)m.peakDeviceUsed);
    o.Set("deviceTotal", (double)m.deviceTotal);
    o.Set("weightBytes", (double)m.weightBytes);
    o.Set("hostEmbeddingBytes", (double)m.hostEmbeddingBytes);
    o.Set("kvCacheBytes", (double)m.kvCacheBytes);
    o.Set("kvBytesPerToken", (double)m.kvBytesPerToken);
    o.Set("scratchBytes", (double)m.scratchBytes);
    o.Set("kvStageBytes", (double)m.kvStageBytes);
    return o;
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    glm::Engine& e = eng(env);
    o.Set("maxChunk", e.maxChunk());
    o.Set("decodeSplits", e.decodeSplits());
    o.Set("decodeHeadsPerBlock", e.decodeHeadsPerBlock());
    o.Set("decodeFusedNorm", e.decodeFusedNorm());
    o.Set("prefillFlash", e.prefillFlash());
    o.Set("graphCaptured", e.graphCaptured());
    o.Set("pdl", e.pdl());
    return o;
  }

  Napi::Value SetUseGraph(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    eng(env).setUseGraph(info.Length() > 0 && info[0].ToBoolean().Value());
    return env.Undefined();
  }

  Napi::Value SetUsePdl(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    eng(env).setUsePdl(info.Length() > 0 && info[0].ToBoolean().Value());
    return env.Undefined();
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    engine_.reset();
    return info.Env().Undefined();
  }
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("version", kAddonVersion);
  exports.Set("probe", Napi::Function::New(env, Probe));
  exports.Set("measureCopyBandwidth", Napi::Function::New(env, MeasureCopyBandwidth));
  exports.Set("Engine", EngineWrap::Define(env));
  Napi::Object kinds = Napi::Object::New(env);
  const char* names[] = {"W_QKV", "B_QKV", "W_DENSE", "B_DENSE", "W_UP", "B_UP", "W_DOWN", "B_DOWN", "W_LN1",
                         "B_LN1", "W_LN2", "B_LN2", "W_FINAL", "B_FINAL", "W_LMHEAD", "W_EMBED", "PREFIX_K", "PREFIX_V",
                         "S_QKV", "S_DENSE", "S_UP", "S_DOWN"};
  static_assert(sizeof(names) / sizeof(names[0]) == glm::KIND_COUNT, "one name per weight kind");
  for (int i = 0; i < glm::KIND_COUNT; i++) kinds.Set(names[i], i);
  exports.Set("kinds", kinds);
  return exports;
}

}  // namespace

NODE_API_MODULE(glmtool_cuda, Init)
