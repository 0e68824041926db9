"""fluidml-tvm: FluidML inference optimizations (layout selection, static memory planning,
measured TensorIR schedules) for Apache TVM 0.27 (Relax)."""

from setuptools import find_packages, setup

setup(
    name="fluidml-tvm",
    version="0.1.0",
    description="FluidML layout, memory and schedule optimizations as Apache TVM Relax passes",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fluidml_tvm", "fluidml_tvm.*"]),
    python_requires=">=3.9",
    install_requires=[
        # TVM 0.27 (Relax only). apache-tvm-ffi 0.1.15.post2 segfaults when serializing any object
        # holding a dtype (meta-schedule databases, save_json): pin the release before it.
        "apache-tvm==0.27.0.post1",
        "apache-tvm-ffi==0.1.14.post0",
        "onnx>=1.16",
        # onnxsim folds the Shape -> Gather -> Concat -> Reshape subgraphs of exported models once
        # the input shapes are fixed; TVM's importer folds simple ones itself but fails on others
        # ("Reshape requires the input new shape to be Shape"), and folding first is uniform.
        "onnxsim>=0.4.36",
        # --freeze-inputs: onnxscript's constant folder inlines an If whose condition became a
        # constant and folds the shape logic behind it; onnxsim fails on an If nested in a branch
        # that reads the branch's values, and TVM's importer does not fold If (tested: 0.7.2).
        "onnxscript>=0.7",
        "numpy>=1.24",
        "xgboost>=2.0",
        "tqdm>=4.60",
        # tvm.rpc and meta-schedule need these; the wheel does not bring them.
        "tornado>=6.0",
        "psutil>=5.9",
        "cloudpickle>=2.0",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "onnxruntime>=1.17", "ruff>=0.5"],
        "plot": ["matplotlib>=3.6"],
        # nvcc from PyPI (~320 MB installed): CUDA libraries (cuda, cuda-sm90, jetson-orin) build
        # on a machine without the CUDA toolkit or a GPU; fluidml_tvm.cuda.find_nvcc finds it.
        "cuda": ["nvidia-cuda-nvcc==13.5.37", "nvidia-cuda-runtime==13.5.37",
                 "nvidia-nvvm==13.5.37", "nvidia-cuda-crt==13.5.37"],
        # benchmarks/corpus.py and run_corpus.py only (never a core dependency): real
        # architectures built from their reference code and exported to ONNX, and OpenVINO as a
        # second reference engine. Pinned to the versions verified together (torch 2.14.1 is
        # the CUDA build on x86_64 PyPI, ~5.5 GB; see benchmarks/README.md "Corpus").
        "corpus": ["torch==2.14.1", "torchvision==0.29.1", "transformers==5.25.0",
                   "openvino==2026.4.1", "onnxruntime>=1.17"],
    },
    entry_points={
        "console_scripts": ["fluidml-tvm=fluidml_tvm.cli:main"],
        # `import tvm` runs every entry point of this group: it registers the fluidml.* keys with
        # TVM's PassContext, so PassContext(config={"fluidml.layout": False}) works in any flow.
        "tvm.backends": ["fluidml = fluidml_tvm.config_keys:_autoload"],
    },
)
