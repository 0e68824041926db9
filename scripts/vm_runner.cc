// vm_runner: run a library exported by `fluidml-tvm compile` with only the TVM runtime.
//
// Built by scripts/install-aarch64-runtime.sh with aarch64-linux-gnu-g++ against the runtime of
// the aarch64 apache-tvm wheel, and run under qemu-user (or on a real aarch64 board):
//
//   vm_runner LIB.so [--threads N] [--repeat R] [--number K]
//             --input DTYPE:D0xD1x...:FILE[@OFFSET] ... --output-dir DIR
//
// Each input FILE holds the tensor's raw bytes (C order), from byte OFFSET (default 0): external
// weights are passed as inputs after the model's own, read straight from NAME.weights. The runner calls the Relax VM's "main"
// once, writes output i to DIR/output_<i>.bin and prints one line per output:
//   output <i> <dtype> <d0,d1,...>
// With --repeat R it then times R x K more calls and prints "time_ms <t1> <t2> ..." (each the mean
// of K calls). Any failure prints "error: <message>" on stderr and exits with code 1.

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    size_t rounded = (n + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct InputSpec {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string path;
  int64_t offset = 0;
};

[[noreturn]] void Fail(const std::string& msg) {
  std::cerr << "error: " << msg << std::endl;
  std::exit(1);
}

InputSpec ParseInput(const std::string& text) {
  size_t a = text.find(':');
  size_t b = a == std::string::npos ? a : text.find(':', a + 1);
  if (b == std::string::npos) Fail("--input wants DTYPE:D0xD1x...:FILE, got " + text);
  InputSpec spec;
  spec.dtype = text.substr(0, a);
  std::string dims = text.substr(a + 1, b - a - 1);
  spec.path = text.substr(b + 1);
  size_t at = spec.path.rfind('@');
  if (at != std::string::npos && at + 1 < spec.path.size() &&
      spec.path.find_first_not_of("0123456789", at + 1) == std::string::npos) {
    spec.offset = std::stoll(spec.path.substr(at + 1));
    spec.path = spec.path.substr(0, at);
  }
  std::stringstream ss(dims);
  std::string item;
  while (std::getline(ss, item, 'x')) {
    if (!item.empty()) spec.shape.push_back(std::stoll(item));
  }
  return spec;
}

ffi::Tensor LoadInput(const InputSpec& spec) {
  DLDataType dtype = ffi::StringToDLDataType(spec.dtype);
  DLDevice cpu{kDLCPU, 0};
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(spec.shape.data(), spec.shape.size()), dtype, cpu);
  size_t n = ffi::GetDataSize(t);
  std::ifstream f(spec.path, std::ios::binary);
  if (!f) Fail("cannot open input " + spec.path);
  f.seekg(spec.offset);
  f.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(n));
  if (static_cast<size_t>(f.gcount()) != n) {
    Fail("input " + spec.path + " has fewer than " + std::to_string(n) + " bytes");
  }
  return t;
}

void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.as<ffi::Tensor>()) {
    out->push_back(*t);
    return;
  }
  if (auto arr = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) Flatten(item, out);
    return;
  }
  Fail("the model returned a value that is neither a tensor nor a tuple: " + std::string(value.GetTypeKey()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Fail("usage: vm_runner LIB.so --input DTYPE:SHAPE:FILE ... --output-dir DIR");
  std::string lib_path = argv[1];
  std::vector<InputSpec> inputs;
  std::string out_dir = ".";
  int repeat = 0, number = 1;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--input") {
      inputs.push_back(ParseInput(next()));
    } else if (arg == "--output-dir") {
      out_dir = next();
    } else if (arg == "--repeat") {
      repeat = std::stoi(next());
    } else if (arg == "--number") {
      number = std::stoi(next());
    } else if (arg == "--threads") {
      setenv("TVM_NUM_THREADS", next().c_str(), 1);
    } else {
      Fail("unknown argument " + arg);
    }
  }
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(lib_path);
    auto load_exec = lib->GetFunction("vm_load_executable", true);
    if (!load_exec) Fail(lib_path + " is not a Relax VM library (no vm_load_executable)");
    ffi::Module vm = (*load_exec)().cast<ffi::Module>();
    // One CPU device (type 1, id 0) with the pooled allocator (2), as relax.VirtualMachine does.
    (*vm->GetFunction("vm_initialization", false))(static_cast<int>(kDLCPU), 0, 2);
    auto main_opt = vm->GetFunction("main", false);
    if (!main_opt) Fail("the library has no Relax function 'main'");
    ffi::Function main_fn = *main_opt;
    std::vector<ffi::Tensor> tensors;
    std::vector<ffi::AnyView> args;
    for (const InputSpec& spec : inputs) tensors.push_back(LoadInput(spec));
    for (const ffi::Tensor& t : tensors) args.push_back(t);
    ffi::Any result;
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    std::vector<ffi::Tensor> outs;
    Flatten(result, &outs);
    for (size_t i = 0; i < outs.size(); ++i) {
      const DLTensor* t = outs[i].GetDLTensorPtr();
      if (t->device.device_type != kDLCPU) Fail("output is not on the CPU");
      std::string path = out_dir + "/output_" + std::to_string(i) + ".bin";
      std::ofstream f(path, std::ios::binary);
      f.write(static_cast<const char*>(t->data) + t->byte_offset,
              static_cast<std::streamsize>(ffi::GetDataSize(*t)));
      if (!f) Fail("cannot write " + path);
      std::cout << "output " << i << " " << ffi::DLDataTypeToString(t->dtype) << " ";
      for (int d = 0; d < t->ndim; ++d) std::cout << (d ? "," : "") << t->shape[d];
      std::cout << "\n";
    }
    if (repeat > 0) {
      std::cout << "time_ms";
      for (int r = 0; r < repeat; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        for (int k = 0; k < number; ++k) {
          ffi::Any ignored;
          main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ignored);
        }
        auto t1 = std::chrono::steady_clock::now();
        std::cout << " " << std::chrono::duration<double, std::milli>(t1 - t0).count() / number;
      }
      std::cout << "\n";
    }
    std::cout.flush();
  } catch (const ffi::Error& err) {
    std::string msg = err.message();
    Fail(err.kind() + ": " + msg.substr(0, msg.find('\n')));
  } catch (const std::exception& err) {
    Fail(err.what());
  }
  return 0;
}
