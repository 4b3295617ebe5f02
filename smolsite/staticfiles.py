"""Static files through WhiteNoise, served by the ASGI app itself (no collectstatic needed: files
come from the finders, and from STATIC_ROOT once collected).

WhiteNoise's own middleware is synchronous: under ASGI every request, not only static ones, would
then pass through a thread, and a static response's file iterator could only be consumed with a
warning. This one works in both modes: under ASGI it looks the path up on the event loop, hands
other requests straight on, and streams a static file read off the loop."""
import os

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, *args, **kwargs):
        super().__init__(get_response, *args, **kwargs)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def add_files(self, root, prefix=None):
        if os.path.isdir(root):  # STATIC_ROOT exists only after collectstatic
            super().add_files(root, prefix)

    def __call__(self, request):
        if self.async_mode:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if self.autorefresh:  # DEBUG: looks at the filesystem
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        response = await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
        if response.streaming and not response.is_async:
            chunks = response.streaming_content

            async def content():
                for part in await sync_to_async(list, thread_sensitive=False)(chunks):
                    yield part

            response.streaming_content = content()
        return response
