// Minimal TensorRT loader for an acsl bundle engine (TensorRT 8.5 - 10.x name-based tensor API).
// Usage: trt_loader deploy/<target>/slim-fp16.engine [runs]
// Feeds zeros (replace with your preprocessed frame: RGB, resize to the manifest's input_size,
// x/255, (x-mean)/std, CHW float32), runs the engine and prints the output shape and mean latency.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <vector>

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TRT] " << msg << "\n";
  }
};

static size_t volume(const nvinfer1::Dims& d) {
  size_t v = 1;
  for (int i = 0; i < d.nbDims; ++i) v *= static_cast<size_t>(d.d[i] > 0 ? d.d[i] : 1);
  return v;
}

int main(int argc, char** argv) {
  if (argc < 2) { std::cerr << "usage: trt_loader ENGINE [runs]\n"; return 2; }
  int runs = argc > 2 ? std::atoi(argv[2]) : 100;
  std::ifstream file(argv[1], std::ios::binary);
  if (!file) { std::cerr << "cannot open " << argv[1] << "\n"; return 2; }
  std::vector<char> blob((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
  std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(blob.data(), blob.size()));
  if (!engine) {
    std::cerr << "engine did not load: it must be built on this device and TensorRT version (see its .json sidecar)\n";
    return 2;
  }
  std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  std::vector<void*> buffers;
  for (int i = 0; i < engine->getNbIOTensors(); ++i) {
    const char* name = engine->getTensorName(i);
    nvinfer1::Dims dims = engine->getTensorShape(name);
    void* ptr = nullptr;
    cudaMalloc(&ptr, volume(dims) * sizeof(float));
    cudaMemset(ptr, 0, volume(dims) * sizeof(float));
    context->setTensorAddress(name, ptr);
    buffers.push_back(ptr);
    std::cout << (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? "input  " : "output ") << name
              << " elements " << volume(dims) << "\n";
  }
  for (int i = 0; i < 10; ++i) context->enqueueV3(stream);  // warm-up
  cudaStreamSynchronize(stream);
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < runs; ++i) context->enqueueV3(stream);
  cudaStreamSynchronize(stream);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / runs;
  std::cout << "mean latency " << ms << " ms over " << runs << " runs\n";
  for (void* p : buffers) cudaFree(p);
  cudaStreamDestroy(stream);
  return 0;
}
