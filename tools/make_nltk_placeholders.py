"""Create empty nltk data archives so that g2p_en's import-time check finds them and does not download.

ESPnet imports g2p_en (phoneme tokenizers) whenever espnet2.tasks.asr is imported. g2p_en checks
for two nltk archives at import and calls nltk.download() when they are missing, which on an
offline machine prints errors and waits on the network. Our recipes never use phoneme tokenizers,
so an empty archive at each path is enough. path.sh points NLTK_DATA here.
"""
import os
import sys
import zipfile

root = sys.argv[1]
for rel in ("taggers/averaged_perceptron_tagger_eng.zip", "corpora/cmudict.zip"):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        zipfile.ZipFile(path, "w").close()
