from setuptools import find_packages, setup

setup(
    name="esapr",
    version="0.1.0",
    description="Sequential recommendation with ESAPR (recency-weighted VAE) and its baselines",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["esapr", "esapr.*"]),
    package_data={"esapr.templates": ["*.yaml"]},
    install_requires=[
        "torch>=2.6",
        "numpy>=1.24",
        "pandas>=2.0",
        "scipy>=1.9",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "ipywidgets>=7.6",
        "gdown>=4.7",
        "optuna>=4.0",
    ],
    # psycopg: SQLAlchemy's PostgreSQL driver, for the test of a study shared through --storage postgresql://
    extras_require={"test": ["pytest>=7", "nbclient>=0.7", "nbformat>=5.7", "ipykernel>=6", "psycopg[binary]>=3.1"]},
    entry_points={"console_scripts": ["esapr=esapr.cli:main"]},
)
