"""`genreal serve`: the browser preview page (`/`) and the WebXR headset page (`/xr`).

Each connection is a `Session` with its own backend instance (temporal cache, style, stats).
Frames travel over a binary WebSocket (`transports.ws`, JPEG or raw RGBA) or WebRTC
(`transports.webrtc`, aiortc: H.264 preferred, VP8 fallback); the latest frame wins.
`security` holds the loopback / TLS / token rules, `protocol` the WebSocket frame layout,
`broadcast` a server-side source restyled once and shown on every page, `app` the routes.

aiohttp is imported only when the server is built; aiortc only when WebRTC is used.
"""
