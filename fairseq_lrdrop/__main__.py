"""`python -m fairseq_lrdrop` prints the directory to pass as --user-dir (after pip install)."""
import os

print(os.path.dirname(os.path.abspath(__file__)))
