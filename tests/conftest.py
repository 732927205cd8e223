import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("NLTK_DATA", os.path.join(ROOT, "tools", "nltk_data"))


# The order the test runner hands out the test files (tests/run.sh: whole files, in this order): the file that
# builds the shared tiny recipe (tests/recipe.py) first; the files without it while it builds, the recipe files
# with a corpus of their own among them; then the files that copy the recipe, longest first.
RECIPE_FILES = ("test_recipe_smoke.py", None, "test_recipe_systems.py", "test_recipe_aio.py", "test_recipe_methods.py",
                "test_recipe_training.py", "test_recipe_kills.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(RECIPE_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, rank[None]))   # stable: each file keeps its order
