"""A small CTC recognizer that reads the system channel back into the task's words.

Usage (the streaming evaluation):

    recognizer = load_recognizer("outputs/recognizer/ctc-synth/recognizer.pt")
    recognizer.check_task(corpus_record["recipe"]["task"])
    windows = reply_windows(manifest)
    words = recognizer.transcribe([w.slice(model_audio) for w in windows])
"""

from s2s.recognizer.artifact import RecognizerArtifactError, load_recognizer, read_artifact, save_recognizer
from s2s.recognizer.decode import greedy_ctc_decode
from s2s.recognizer.recognizer import Recognizer, TaskMismatchError
from s2s.recognizer.vocabulary import Vocabulary, VocabularyError, vocabulary_from_task
from s2s.recognizer.windows import ReplyWindow, reply_windows

__all__ = [
    "Recognizer",
    "RecognizerArtifactError",
    "ReplyWindow",
    "TaskMismatchError",
    "Vocabulary",
    "VocabularyError",
    "greedy_ctc_decode",
    "load_recognizer",
    "read_artifact",
    "reply_windows",
    "save_recognizer",
    "vocabulary_from_task",
]
