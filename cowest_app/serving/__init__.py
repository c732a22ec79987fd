"""The web app: the service behind the UI, the streamed collaboration and the Gradio tabs."""
