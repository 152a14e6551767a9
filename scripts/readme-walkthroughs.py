#!/usr/bin/env python3
"""Copies each examples/walkthroughs/ script into README.md, into the ```sh block that follows its
marker line `<!-- walkthrough: examples/walkthroughs/NAME.sh -->`. The suite checks they agree
(walkthroughs::the_readme_shows_each_walkthrough_script_verbatim) and runs the scripts."""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
readme = root / "README.md"
text = readme.read_text()
block = re.compile(r"(<!-- walkthrough: (examples/walkthroughs/[\w.-]+) -->\n```sh\n)(.*?)(```\n)", re.S)
text, n = block.subn(lambda m: m[1] + (root / m[2]).read_text() + m[4], text)
readme.write_text(text)
print(f"readme-walkthroughs: {n} block(s) copied")
