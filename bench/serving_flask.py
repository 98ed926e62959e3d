"""A bundle behind Flask as a tutorial would serve it: the baseline of bench/serving.py.

Werkzeug's threaded server, one forward pass per request (`Predictor.predict` on that request's inputs, base64 files
decoded as aiprod serve decodes them), a JSON answer with each input's label and probabilities. Its per-request log is
off, as aiprod serve's access log is in the bench.

    .venv/bin/python bench/serving_flask.py BUNDLE PORT
"""
import base64, logging, sys

from flask import Flask, jsonify, request

from aiprod.predict import load

predictor = load(sys.argv[1])
app = Flask(__name__)


@app.post("/predict")
def predict():
    items = request.get_json()["inputs"]
    if predictor.kind != "text": items = [base64.b64decode(item) for item in items]
    result = predictor.predict(items)
    return jsonify({"predictions": [{"label": label, "probabilities": dict(zip(result.classes, row))}
                                    for label, row in zip(result.labels, result.probabilities.tolist())]})


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.run(host="127.0.0.1", port=int(sys.argv[2]), threaded=True)
