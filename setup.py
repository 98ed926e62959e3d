"""Package metadata lives in settings.ini (nbdev's convention); this file only reads it."""
from configparser import ConfigParser
from setuptools import find_packages, setup

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]
licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
# nbdev's mapping: settings.ini's `status` indexes this list, so status = 3 is "4 - Beta" (the trove classifiers number
# their stages from 1; "3 - Beta" is not one of them, and PyPI rejects unknown classifiers)
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]

setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=licenses[cfg["license"]][0],
    keywords=cfg["keywords"].split(),
    url=cfg["git_url"],
    classifiers=[
        f"Development Status :: {statuses[int(cfg['status'])]}",
        f"Intended Audience :: {cfg['audience']}",
        f"License :: {licenses[cfg['license']][1]}",
        f"Programming Language :: Python :: {cfg['min_python']}",
    ],
    python_requires=f">={cfg['min_python']}",
    packages=find_packages(include=["aiprod", "aiprod.*"]),
    package_data={"aiprod": ["templates/*.ipynb", "sweeps/*.yaml"]},
    include_package_data=True,
    install_requires=cfg["requirements"].split(),
    extras_require={"dev": cfg["dev_requirements"].split()},
    entry_points={"console_scripts": cfg["console_scripts"].split()},
    zip_safe=False,
)
