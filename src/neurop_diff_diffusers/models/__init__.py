from .neural_operator import DEFAULT_CHUNK_SIZE, GalerkinNeuralOperator, GalerkinNeuralOperatorOutput

__all__ = ["DEFAULT_CHUNK_SIZE", "GalerkinNeuralOperator", "GalerkinNeuralOperatorOutput"]
