"""The embedded default corpus: sentence text from Debian's word lists, speech from Debian's TTS engines."""
