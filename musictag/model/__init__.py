"""The ear: the audio front end (decode, excerpts, log-mel), the network, its checkpoint and shipped file,
inference, and the vocabulary of values a model writes. Light modules (audio, vocabulary) import no torch."""
